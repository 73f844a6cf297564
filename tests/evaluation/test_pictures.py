"""Pictures of images: small ones enlarged by whole factors with sharp pixels, labelled sheets, steps spread."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ti_experiments.evaluation.pictures import block, fit, sheet, spread


def _checker(size: int) -> Image.Image:
    pixels = (np.indices((size, size)).sum(0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([pixels] * 3, -1))


def test_a_small_image_is_enlarged_by_a_whole_factor_with_sharp_pixels():
    big = fit(_checker(32), 128)
    assert big.size == (128, 128)
    assert set(np.unique(np.asarray(big))) == {0, 255}  # nearest-neighbour: no blurred greys
    assert fit(_checker(32), 100).size == (96, 96)  # 3x, the largest whole factor that fits
    assert fit(Image.new("RGB", (512, 256)), 128).size == (128, 64)  # a large one is shrunk to fit


def test_a_sheet_has_a_cell_per_row_and_column_below_the_headers():
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    picture = sheet([("a photo of a <demo-toy>", [[red], [blue]]), ("second", [[blue, blue], []])],
                    ["step 1", "step 2"], size=64)
    pixels = np.asarray(picture)
    assert (pixels == [255, 0, 0]).all(-1).sum() == 64 * 64  # the one red image, enlarged 2x
    assert (pixels == [0, 0, 255]).all(-1).sum() == 3 * 64 * 64
    assert picture.width > 2 * block([blue, blue], 64).width  # the label column and two columns


def test_spread_keeps_the_first_and_the_last():
    assert spread(list(range(30)), 4) == [0, 10, 19, 29]
    assert spread([1, 2], 10) == [1, 2]
