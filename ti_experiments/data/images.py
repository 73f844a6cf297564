"""Concept images: read a folder once, skip what is not an image, resize and crop once."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import TIError
from ..records.memory import refuse_beyond_memory
from ..config.settings import Settings, bound
from .templates import CAPTION_MODES, FILEWORDS, has_placeholder

log = logging.getLogger(__name__)

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class DataSettings(Settings):
    """The `data` config group: how images become training tensors."""

    GROUP = "data"

    resolution: int = bound(512, minimum=1, example="512")
    center_crop: bool = False
    flip_p: float = bound(0.5, minimum=0, example="0.5")
    interpolation: Literal[tuple(INTERPOLATIONS)] = "bicubic"
    repeats: int = bound(100, minimum=1, example="100")
    num_workers: int = bound(0, minimum=0, example="0")
    # none: templates only; file: each image's caption file; filewords: templates with [filewords] = caption
    captions: Literal[CAPTION_MODES] = "none"
    caption_extension: str = bound(".txt", example=".txt")
    # null: the built-in templates of the concept's kind; or your own, with {} or [name] (and [filewords])
    templates: list[str] | None = bound(None, example="['a photo of {}']")

    def __post_init__(self):
        super().__post_init__()
        if not str(self.caption_extension).startswith(".") or len(str(self.caption_extension)) < 2:
            raise TIError(f"data.caption_extension={self.caption_extension!r} is not a file extension",
                          "use e.g. .txt or .caption")
        if self.templates is not None:
            self.templates = [str(t) for t in self.templates]
            bad = [t for t in self.templates if not has_placeholder(t, "<concept>")]
            if not self.templates or bad:
                raise TIError(f"data.templates has {'a template without the concept: ' + repr(bad[0]) if bad else 'no template'}",
                              "put {} or [name] where the concept goes in every template, e.g. 'a photo of {}'")
            if self.captions == "file":
                log.warning("data.templates is not used with data.captions=file (each prompt is the image's caption)")
            if self.captions == "filewords" and not any(FILEWORDS in t for t in self.templates):
                raise TIError("data.captions=filewords but no template of data.templates has [filewords]",
                              "add [filewords] where the caption goes, e.g. 'a photo of {}, [filewords]'")
        if self.flip_p > 1.0:
            raise TIError(f"data.flip_p={self.flip_p} is not a probability", "use a value in [0, 1]")


def _open_rgb(path: Path, resolution: int) -> tuple[Image.Image, tuple[int, int]]:
    """Any mode (grayscale, palette, 16-bit, alpha, CMYK) as RGB, turned as its EXIF says; and the
    image's real (width, height) upright, which a reduced-scale decode of a huge JPEG does not show."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn by 90 degrees
            width, height = height, width
        if img.format == "JPEG" and min(img.size) >= 4 * resolution:
            img.draft("RGB", (2 * resolution, 2 * resolution))  # decode a huge photo at a reduced scale
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale, don't clip
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
        return img.convert("RGB"), (width, height)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> CHW float in [-1, 1], as the VAE expects."""
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def crop_box(width: int, height: int, settings: DataSettings) -> tuple[int, int, int, int]:
    """The part of the image that is trained on, (left, top, right, bottom): the centre square with
    center_crop, else the whole image (squashed to a square, as the diffusers example does)."""
    if not settings.center_crop:
        return 0, 0, width, height
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def size_conditioning(real_size: tuple[int, int], decoded_size: tuple[int, int],
                      settings: DataSettings) -> torch.Tensor:
    """SDXL's size and crop conditioning of one image, as is and mirrored: [2, 6] rows of original
    (height, width), crop top-left (y, x) and target (height, width).

    The crop offset is measured in the pixels of the image resized so that the kept part is the
    target size, as in SDXL's own training; a mirrored image's kept part starts at the other side.
    """
    (w, h), (dw, dh), res = real_size, decoded_size, settings.resolution
    left, top, right, bottom = crop_box(dw, dh, settings)
    scale_x, scale_y = res / (right - left), res / (bottom - top)
    rows = [[h, w, round(top * scale_y), round(left * scale_x), res, res],
            [h, w, round(top * scale_y), round((dw - right) * scale_x), res, res]]
    return torch.tensor(rows, dtype=torch.float32)


def prepare_image(img: Image.Image, settings: DataSettings) -> Image.Image:
    """Centre square crop (optional), then resize to resolution x resolution, as the example does."""
    if settings.center_crop:
        img = img.crop(crop_box(*img.size, settings))
    size = (settings.resolution, settings.resolution)
    if img.size != size:
        img = img.resize(size, resample=INTERPOLATIONS[settings.interpolation])
    return img


def list_image_files(folder: Path, caption_extension: str | None = None) -> list[Path]:
    """The files of a concept folder that may be images: not hidden, not caption files."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and (caption_extension is None or p.suffix != caption_extension))


def read_caption(path: Path) -> str | None:
    """One line of text (an empty file is no caption): whitespace, newlines included, folded to single spaces."""
    try:
        text = " ".join(path.read_text(encoding="utf-8-sig").split())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TIError(f"caption file {path} cannot be read ({exc.__class__.__name__})", "save it as UTF-8 text") from None
    return text or None


class ConceptImages:
    """The usable images of a concept folder, prepared once; a few images fit in memory easily."""

    def __init__(self, folder: str | os.PathLike, settings: DataSettings):
        folder = Path(folder).expanduser()
        hint = "set concept.train_data_dir to a folder of 3-10 images of the concept"
        if not folder.is_dir():
            raise TIError(f"concept.train_data_dir {str(folder)!r} does not exist or is not a folder", hint)
        with_captions = settings.captions != "none"
        files = list_image_files(folder, settings.caption_extension if with_captions else None)
        if not files:
            raise TIError(f"concept.train_data_dir {str(folder)!r} is empty", hint)
        # the images as float tensors alone (the model needs more): a size beyond memory stops here
        refuse_beyond_memory(len(files) * settings.resolution**2 * 3 * 4,
                             f"data.resolution={settings.resolution} with {len(files)} images",
                             "use the model's resolution, e.g. data.resolution=512 (SD 1.x) or 1024 (SDXL)")
        self.paths: list[Path] = []
        tensors: list[torch.Tensor] = []
        sizes: list[torch.Tensor] = []
        for path in files:
            try:
                img, real_size = _open_rgb(path, settings.resolution)
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                log.warning("skipping %s: not a readable image (%s)", path, exc.__class__.__name__)
                continue
            if min(img.size) < settings.resolution:
                log.warning("%s is %dx%d, smaller than data.resolution=%d: upscaling it", path.name, *img.size,
                            settings.resolution)
            sizes.append(size_conditioning(real_size, img.size, settings))
            tensors.append(_to_tensor(prepare_image(img, settings)))
            self.paths.append(path)
        if not tensors:
            raise TIError(f"no file in {str(folder)!r} is a readable image ({len(files)} skipped)", hint)
        self.pixels = torch.stack(tensors)  # [N, 3, H, W] in [-1, 1]
        # SDXL's add_time_ids of each image [2 (as is, mirrored), N, 6], indexed like the latent cache
        self.time_ids = torch.stack(sizes, dim=1)
        # the caption of image i is captions[i]; it travels with the image index, as the latents do
        self.captions: list[str | None] = [read_caption(p.with_suffix(settings.caption_extension))
                                           if with_captions else None for p in self.paths]
        missing = [p for p, c in zip(self.paths, self.captions) if c is None]
        if with_captions and missing:
            example = f"{missing[0]} (no {missing[0].with_suffix(settings.caption_extension).name} or an empty one)"
            if settings.captions == "file":
                raise TIError(f"data.captions=file but {len(missing)} of {len(self.paths)} images have no caption, "
                              f"e.g. {example}",
                              "write the caption files, or use data.captions=filewords (the template alone where "
                              "a caption is missing)")
            log.warning("%d of %d images have no caption, e.g. %s: their prompts are the template alone",
                        len(missing), len(self.paths), example)
        log.info("%d training images from %s%s", len(self.paths), folder,
                 f", captions from *{settings.caption_extension} ({settings.captions})" if with_captions else "")

    def __len__(self) -> int:
        return len(self.paths)
