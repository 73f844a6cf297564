"""`python -m ti_experiments.toyworld.picture RUN_DIR [--out PNG]`: what a toy-world run learned, in one picture.

Three rows: the concept's real images, "a photo of a <initializer>" and "a photo of a <token>" from the
run's model (same seeds), drawn 4x larger, as the README shows for the demo.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from ..errors import ArgumentParser


def concept_picture(run_dir: Path, count: int = 6, seed: int = 0, steps: int = 25, guidance: float = 4.0,
                    scale: int = 4) -> Image.Image:
    from omegaconf import OmegaConf

    from ..data.images import list_image_files
    from ..models.generation import generate

    cfg = OmegaConf.load(run_dir / "resolved_config.yaml")
    real = [Image.open(p).convert("RGB") for p in list_image_files(Path(cfg.concept.train_data_dir).expanduser())[:count]]
    kind = "in the style of" if cfg.concept.learnable_property == "style" else "a photo of a"
    phrase = "a painting in the style of {}" if kind == "in the style of" else "a photo of a {}"
    common = dict(num_images=count, steps=steps, guidance=guidance, seed=seed, progress=False)
    init = generate(phrase.format(cfg.concept.initializer_token), model=str(cfg.model.pretrained_model_name_or_path),
                    **common)
    learned = generate(phrase.format(cfg.concept.placeholder_token), run_dir, **common)
    size = 32 * scale
    sheet = Image.new("RGB", (count * size, 3 * size), "white")
    for row, images in enumerate((real, init, learned)):
        for col, image in enumerate(images[:count]):
            sheet.paste(image.resize((size, size), Image.NEAREST), (col * size, row * size))
    return sheet


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ti_experiments.toyworld.picture", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/learned.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / "learned.png"
    concept_picture(args.run_dir, seed=args.seed).save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
