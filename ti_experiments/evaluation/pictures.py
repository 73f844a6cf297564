"""Sheets of images with their labels: validation samples over steps, the report's last images side by side.

Small images (the toy world's 32 px) are enlarged by a whole factor with nearest-neighbour, so each pixel
stays a sharp square a reader can see instead of a blur; large ones are shrunk to fit their cell.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

PAD = 10
FONT_SIZE = 13


def fit(image: Image.Image, size: int) -> Image.Image:
    """`image` with its longer side at most `size`: enlarged by the largest whole factor that fits
    (nearest-neighbour), or shrunk (Lanczos) when it is larger."""
    image = image.convert("RGB")
    longer = max(image.size)
    if longer <= size:
        factor = size // longer
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    scale = size / longer
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def block(images: list[Image.Image], size: int) -> Image.Image:
    """Several images of one cell in a near-square block (4 images: 2 x 2), each fitted to `size`."""
    if not images:
        return Image.new("RGB", (size, size), "white")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    fitted = [fit(im, size) for im in images]
    out = Image.new("RGB", (cols * size + (cols - 1) * 2, rows * size + (rows - 1) * 2), "white")
    for i, im in enumerate(fitted):
        out.paste(im, ((i % cols) * (size + 2), (i // cols) * (size + 2)))
    return out


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and font.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


def sheet(rows: list[tuple[str, list[list[Image.Image]]]], columns: list[str], size: int = 128,
          label_width: int = 180) -> Image.Image:
    """A labelled table of images: `rows` are (label, cells), each cell a list of images (a block);
    `columns` are the headers above the cells."""
    font = _font()
    cells = [[block(c, size) for c in cells] for _, cells in rows]
    col_w = [max((r[j].width for r in cells if j < len(r)), default=size) for j in range(len(columns))]
    row_h = [max((c.height for c in r), default=size) for r in cells]
    header = FONT_SIZE + 2 * PAD
    left = label_width if any(label for label, _ in rows) else 0
    width = left + sum(col_w) + PAD * (len(col_w) + 1)
    height = header + sum(row_h) + PAD * (len(row_h) + 1)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    x = left + PAD
    for j, name in enumerate(columns):
        draw.text((x, PAD), name, fill="black", font=font)
        x += col_w[j] + PAD
    y = header + PAD
    for (label, _), r, h in zip(rows, cells, row_h):
        for k, line in enumerate(_wrap(label, font, left - 2 * PAD)[: max(1, h // (FONT_SIZE + 3))]):
            draw.text((PAD, y + k * (FONT_SIZE + 3)), line, fill="black", font=font)
        x = left + PAD
        for j, cell in enumerate(r):
            out.paste(cell, (x, y))
            x += col_w[j] + PAD
        y += h + PAD
    return out


def spread(items: list, most: int) -> list:
    """At most `most` of `items`, evenly spread, the first and the last always among them."""
    if len(items) <= most:
        return list(items)
    picks = {round(i * (len(items) - 1) / (most - 1)) for i in range(most)}
    return [items[i] for i in sorted(picks)]
