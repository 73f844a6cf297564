"""Training prompts: the templates of Gal et al. (2022) as the diffusers example uses them, per-image
captions, or templates that mix in the caption (`[filewords]`, the AUTOMATIC1111 convention)."""

from __future__ import annotations

import random
import re

OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]

# The original list repeats two entries; kept, so the draw frequencies match the reference.
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
]

TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}

CAPTION_MODES = ("none", "file", "filewords")
FILEWORDS = "[filewords]"


def _marks(placeholder_string: str) -> re.Pattern:
    """Where a text puts the concept: `{}` (diffusers, kohya), `[name]` (A1111), or the placeholder itself
    (all its tokens, or just the first: a caption may name `<tok>` of a multi-vector concept)."""
    token = re.escape(placeholder_string.split()[0])
    named = rf"(?<![\w-])(?:{re.escape(placeholder_string)}|{token}(?:_\d+)?)(?![\w-])"
    return re.compile(rf"\{{\}}|\[name\]|{named}")


def has_placeholder(text: str, placeholder_string: str) -> bool:
    return bool(_marks(placeholder_string).search(text))


def fill(text: str, placeholder_string: str) -> str:
    """Every mark of the concept becomes the placeholder string, so every vector is in the prompt."""
    return _marks(placeholder_string).sub(lambda _: placeholder_string, text)


def with_filewords(templates: list[str]) -> list[str]:
    """The built-in templates, each followed by the image's caption: 'a photo of a {}, [filewords]'."""
    return [f"{t}, {FILEWORDS}" for t in templates]


class Prompts:
    """The text of one training item, drawn from its own RNG.

    none: a template of the concept's kind; file: the image's caption (the placeholder where it says `{}` or
    `[name]` or names the placeholder, else put in front: '<tok>, caption'); filewords: a template with
    `[filewords]` replaced by the caption (an image without one gets the template alone).
    """

    def __init__(self, mode: str, templates: list[str], placeholder_string: str,
                 captions: list[str | None] | None = None):
        self.mode = mode
        self.templates = templates
        self.placeholder_string = placeholder_string
        self.captions = captions or []

    def caption(self, image_index: int) -> str:
        return (self.captions[image_index] if image_index < len(self.captions) else None) or ""

    def __call__(self, rng: random.Random, image_index: int) -> str:
        # mode none/filewords: the template is the item's first draw, as before, so mode none keeps its prompts
        return self.text(None if self.mode == "file" else rng.choice(self.templates), image_index)

    def text(self, template: str | None, image_index: int) -> str:
        caption = self.caption(image_index)
        if self.mode == "file":
            if not has_placeholder(caption, self.placeholder_string):
                caption = f"{{}}, {caption}" if caption else "{}"
            return fill(caption, self.placeholder_string)
        text = fill(template, self.placeholder_string)
        if self.mode == "filewords" and FILEWORDS in text:
            text = text.replace(FILEWORDS, fill(caption, self.placeholder_string))
            text = re.sub(r"(\s*,)+\s*$", "", re.sub(r",\s*(,\s*)+", ", ", text)).strip()
        return text

    def all_texts(self, image_index: int) -> list[str]:
        """Every prompt an image can get."""
        return [self.text(t, image_index) for t in ([None] if self.mode == "file" else self.templates)]
