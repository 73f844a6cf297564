"""Where a concept's images come from when its folder is empty: the Hub, or drawn offline."""

from __future__ import annotations

import logging
import math
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from ..errors import TIError, cause
from ..records.files import atomic_dir

log = logging.getLogger(__name__)

IMAGE_PATTERNS = ["*.png", "*.jpg", "*.jpeg", "*.webp", "*.bmp", "*.PNG", "*.JPG", "*.JPEG"]


def download_hub_dataset(repo_id: str, target_dir: str | Path, revision: str | None = None) -> Path:
    """Fetch the images of a Hub dataset repository into target_dir (once)."""
    from huggingface_hub import snapshot_download

    target_dir = Path(target_dir).expanduser()
    log.info("downloading the images of the Hub dataset %s into %s", repo_id, target_dir)
    try:
        with atomic_dir(target_dir, keep_existing=True) as tmp:  # one snapshot, whoever fetches it
            snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                              local_dir=str(tmp), allow_patterns=IMAGE_PATTERNS)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
    except Exception as exc:  # noqa: BLE001 - every failure here has the same remedy
        first = cause(exc)
        raise TIError(
            f"could not download the images of the Hub dataset {repo_id!r} (no network?): {first}",
            f"put the concept's images in {target_dir} or set concept.train_data_dir to a local folder",
        ) from None
    return target_dir


def _background(rng: random.Random, size: int) -> Image.Image:
    top = tuple(rng.randint(120, 240) for _ in range(3))
    bottom = tuple(rng.randint(40, 160) for _ in range(3))
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        t = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    return img


def _draw_toy(img: Image.Image, rng: random.Random) -> None:
    """An orange round toy with a purple star belly and two ears: one look, many poses."""
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.32) * size
    cx = rng.uniform(r + 2, size - r - 2)
    cy = rng.uniform(r + 2, size - r - 2)
    for side in (-1, 1):
        ear = [(cx + side * r * 0.9, cy - r * 0.4), (cx + side * r * 0.35, cy - r * 0.95),
               (cx + side * r * 1.05, cy - r * 1.2)]
        draw.polygon(ear, fill=(235, 120, 20))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(245, 140, 30), outline=(120, 50, 0), width=2)
    star = []
    rot = rng.uniform(0, math.pi)
    for k in range(10):
        rad = r * (0.45 if k % 2 == 0 else 0.2)
        a = rot + k * math.pi / 5
        star.append((cx + rad * math.cos(a), cy + r * 0.15 + rad * math.sin(a)))
    draw.polygon(star, fill=(120, 40, 200))
    for side in (-1, 1):
        ex, ey, er = cx + side * r * 0.35, cy - r * 0.35, r * 0.12
        draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(20, 20, 20))


def _draw_style(img: Image.Image, rng: random.Random) -> None:
    """Thick strokes in one teal/magenta/gold palette over deep blue, softened like paint."""
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size, size], fill=(18, 24, 70))
    palette = [(20, 170, 160), (210, 40, 140), (240, 190, 40), (250, 240, 220)]
    for _ in range(40):
        x0, y0 = rng.uniform(0, size), rng.uniform(0, size)
        angle = rng.uniform(0, math.pi)
        length = rng.uniform(0.15, 0.5) * size
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=rng.choice(palette), width=rng.randint(3, 9))
    img.paste(img.filter(ImageFilter.GaussianBlur(1.2)))


def make_demo_images(target_dir: str | Path, kind: str = "object", num_images: int = 6,
                     size: int = 128, seed: int = 0) -> Path:
    """Draw a few images of a distinctive toy (kind=object) or painting style (kind=style)."""
    if kind not in ("object", "style"):
        raise TIError(f"demo image kind {kind!r} is unknown", "use kind: object or kind: style")
    target_dir = Path(target_dir).expanduser()
    rng = random.Random(f"{kind}-{seed}")
    with atomic_dir(target_dir, keep_existing=True) as tmp:  # the same images whoever draws them
        for i in range(num_images):
            img = _background(rng, size)
            (_draw_toy if kind == "object" else _draw_style)(img, rng)
            img.save(tmp / f"{kind}-{i:02d}.png")
    log.info("drew %d demo %s images into %s", num_images, kind, target_dir)
    return target_dir


def draw_toyworld_concept(target_dir: str | Path, name: str, num_images: int = 6, seed: int = 0) -> Path:
    """The images of one of the toy world's named concepts: its fixed parts, everything else varied."""
    from ..toyworld import world

    if name not in world.CONCEPTS:
        raise TIError(f"the toy world has no concept {name!r}", f"use one of {', '.join(world.CONCEPTS)}")
    return draw_toyworld_images(target_dir, world.CONCEPTS[name], num_images, seed)


def draw_toyworld_images(target_dir: str | Path, concept, num_images: int = 6, seed: int = 0) -> Path:
    """Images of any toy-world combination (a `world.Concept`, named or not), drawn the same way whoever
    draws them: the concept's fixed parts, everything else varied."""
    from ..toyworld import world

    name = concept.name
    target_dir = Path(target_dir).expanduser()
    rng = random.Random(f"toyworld-{name}-{seed}")
    with atomic_dir(target_dir, keep_existing=True) as tmp:  # the same images whoever draws them
        for i, scene in enumerate(concept.scenes(num_images, seed)):
            world.render(scene, rng)[0].save(tmp / f"{name}-{i:02d}.png")
    log.info("drew %d images of the toy world's %s into %s", num_images, name, target_dir)
    return target_dir
