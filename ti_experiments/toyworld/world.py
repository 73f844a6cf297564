"""The toy world: seeded scenes of one object, drawn at 32 px, and the captions that describe them.

Every factor (shape, colour, size, position, background, pattern, and the parts that make an object
composite: ears and a coloured dot) is drawn independently, so a model trained on these captions can
compose combinations it never saw. The named concepts below are such combinations; pretraining never
draws them, and no caption has one word for them, so textual inversion has something real to find.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator

import numpy as np
from PIL import Image

from ..data.templates import OBJECT_TEMPLATES, STYLE_TEMPLATES

SIZE_PX = 32
_SUPERSAMPLE = 4  # drawn at 128 px and box-filtered: soft edges like a real image's

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (240, 210, 40),
    "purple": (140, 60, 200), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (25, 25, 25),
}
BACKGROUNDS = {
    "gray": (128, 128, 128), "pink": (245, 170, 200), "teal": (30, 130, 130), "brown": (120, 80, 40),
    "navy": (20, 30, 90), "cyan": (130, 215, 235),
}
SIZES = {"small": 5.0, "medium": 7.0, "large": 9.5}  # half-extent in pixels
# name -> (column, row) of a 3 x 3 grid
POSITIONS = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
_GRID = (9.0, 16.0, 23.0)
PATTERNS = ("plain", "striped")
DOT_COLOURS = ("none",) + tuple(COLOURS)
ATTRIBUTES = {  # what the judge classifies, and the values it chooses among
    "shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS), "pattern": PATTERNS, "ears": ("no", "yes"), "dot": DOT_COLOURS,
}
# words that appear in captions, for the tokenizer
WORDS = sorted({w for v in ATTRIBUTES.values() for name in v for w in name.split()}
               | {"a", "an", "with", "and", "ears", "dot", "at", "the", "on", "background"})


@dataclasses.dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    pattern: str = "plain"
    ears: bool = False
    dot: str = "none"  # a dot's colour, or none

    def key(self) -> tuple:
        return dataclasses.astuple(self)

    def labels(self) -> dict[str, int]:
        """Each attribute as the index of its value in ATTRIBUTES (the judge's classes)."""
        values = {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position,
                  "background": self.background, "pattern": self.pattern, "ears": "yes" if self.ears else "no",
                  "dot": self.dot}
        return {name: ATTRIBUTES[name].index(value) for name, value in values.items()}


def describe(scene: Scene, *, size: bool = True, position: bool = True, background: bool = True) -> str:
    """The scene in words (without the leading article), naming every attribute unless told to leave
    one out; the pattern is always said, so that 'plain' and 'striped' are both words the model knows."""
    words = [scene.size] if size else []
    words += [scene.colour, scene.pattern, scene.shape]
    parts = (["ears"] if scene.ears else []) + ([f"a {scene.dot} dot"] if scene.dot != "none" else [])
    if parts:
        words += ["with", " and ".join(parts)]
    if position:
        words += ["at the", scene.position]
    if background:
        words += ["on a", scene.background, "background"]
    return " ".join(words)


def caption(scene: Scene) -> str:
    """The full caption, as the quality check and the judge's text tower read it."""
    return _article(describe(scene))


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def render(scene: Scene, rng: random.Random | None = None) -> tuple[Image.Image, np.ndarray]:
    """The scene as a 32 px RGB image and the object's coverage mask (float, 0..1).

    `rng` jitters the position by up to a pixel, so the images of one scene are not all the same.
    """
    s = _SUPERSAMPLE
    n = SIZE_PX * s
    col, row = POSITIONS[scene.position]
    jx, jy = (rng.uniform(-1, 1), rng.uniform(-1, 1)) if rng else (0.0, 0.0)
    cx, cy, r = (_GRID[col] + jx) * s, (_GRID[row] + jy) * s, SIZES[scene.size] * s
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    body = _shape_mask(scene.shape, dx, dy, r)
    img = np.empty((n, n, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    colour = np.array(COLOURS[scene.colour], np.float32)
    fill = np.broadcast_to(colour, img.shape).copy()
    if scene.pattern == "striped":  # 2 px bands of a darker shade (of a lighter one for black)
        band = ((yy // (2 * s)) % 2 == 1)
        shade = colour * 0.45 if colour.mean() > 60 else np.array([150, 150, 150], np.float32)
        fill[band] = shade
    mask = body.copy()
    if scene.ears:
        ear = r * 0.45
        for side in (-1, 1):
            ex, ey = cx + side * r * 0.65, cy - r - ear * 0.55
            ears = _shape_mask("triangle", xx - ex, yy - ey, ear)
            img[ears] = colour
            mask |= ears
    img[body] = fill[body]
    if scene.dot != "none":
        dot = (dx ** 2 + dy ** 2) <= (r * 0.42) ** 2
        img[dot] = COLOURS[scene.dot]
        mask |= dot
    small = img.reshape(SIZE_PX, s, SIZE_PX, s, 3).mean(axis=(1, 3))
    cover = mask.reshape(SIZE_PX, s, SIZE_PX, s).mean(axis=(1, 3))
    return Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8)), cover


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":  # pointing up, base at the bottom
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.58)
    if shape == "cross":
        arm = r * 0.36
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "heart":  # never drawn in pretraining: the negative control
        x, y = dx / r, -dy / r
        return (x ** 2 + y ** 2 - 0.6) ** 3 - x ** 2 * y ** 3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


# -- what pretraining may draw ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Concept:
    """A combination the model can draw but pretraining never shows: textual inversion's targets.

    `fixed` are the attributes every image of the concept shares; the others vary from image to image.
    """
    name: str
    fixed: dict

    def matches(self, scene: Scene) -> bool:
        return all(getattr(scene, k) == v for k, v in self.fixed.items())

    def description(self) -> str:
        """The concept in the model's own words, as 'a photo of a {}' would read it."""
        example = Scene(**{**dict(shape="circle", colour="red", size="medium", position="center",
                                  background="gray"), **self.fixed})
        return describe(example, size="size" in self.fixed, position=False,
                        background="background" in self.fixed)

    def scenes(self, count: int, seed: int = 0) -> list[Scene]:
        rng = random.Random(f"concept-{self.name}-{seed}")
        return [dataclasses.replace(draw_scene(rng), **self.fixed) for _ in range(count)]


CONCEPTS = {
    c.name: c for c in (
        Concept("demo",
                dict(shape="circle", colour="orange", size="large", pattern="plain", ears=True, dot="purple")),
        Concept("demo_style",
                dict(colour="yellow", pattern="striped", background="navy", ears=False, dot="none")),
        Concept("eared_box",
                dict(shape="square", colour="white", size="medium", pattern="striped", ears=True, dot="red")),
        Concept("dotted_cross",
                dict(shape="cross", colour="green", size="large", pattern="plain", ears=False, dot="yellow")),
    )
}


# -- nicknames: one word for several attributes ------------------------------------------------------
#
# Real text encoders know words that stand for many attributes at once ("a lemon": yellow, oval, dotted
# skin). Captions that only ever name one attribute per word teach the UNet to read each attribute from
# its own word, and leave one learned vector (textual inversion's) little room to say a combination.
# From a late step of pretraining on, some scenes are called by a nickname instead: an everyday word the
# tokenizer already knows that stands for a fixed random combination of attributes. No nickname comes
# near a named concept, so textual inversion still has something of its own to find.
NICKNAMES = tuple("""
cat dog bird fish horse cow pig sheep lion tiger bear wolf fox rabbit mouse duck owl frog monkey elephant
dragon robot monster cup mug bowl plate bottle vase bag hat shoe shirt dress coat book pen clock lamp phone
camera ball bike boat ship plane truck bus wheel apple banana cake bread pizza candy tree flower leaf rock
house castle moon sun cloud teddy doll car""".split())


def nicknames(seed: int = 0) -> dict[str, dict]:
    """Each nickname's fixed attributes: colour, pattern and parts always; the shape three times in four,
    the size and the background now and then (a nickname without a shape is a style, like demo_style).
    A combination within two attributes of a named concept is drawn again."""
    rng = random.Random(f"nicknames-{seed}")
    table: dict[str, dict] = {}
    for word in NICKNAMES:
        while True:
            colour = rng.choice(tuple(COLOURS))
            fixed = dict(colour=colour, pattern=rng.choice(PATTERNS), ears=rng.random() < 0.4,
                         dot="none" if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != colour]))
            if rng.random() < 0.75:
                fixed["shape"] = rng.choice(SHAPES)
            if rng.random() < 0.4:
                fixed["size"] = rng.choice(tuple(SIZES))
            if rng.random() < 0.3:
                fixed["background"] = rng.choice(tuple(BACKGROUNDS))
            if all(_differences(fixed, c.fixed) >= 2 for c in CONCEPTS.values()):
                table[word] = fixed
                break
    return table


def _differences(fixed: dict, concept: dict) -> int:
    """How many of a concept's fixed attributes a nickname fixes to another value."""
    return sum(1 for k, v in concept.items() if k in fixed and fixed[k] != v)


def nickname_caption(scene: Scene, word: str, fixed: dict, rng: random.Random) -> str:
    """The scene called by its nickname, with the attributes the nickname leaves open said in words now
    and then: 'a small cat at the top left on a teal background', 'a photo of a cat'."""
    words = [scene.size] if "size" not in fixed and rng.random() < 0.5 else []
    words.append(word)
    if rng.random() < 0.5:
        words += ["at the", scene.position]
    if "background" not in fixed and rng.random() < 0.5:
        words += ["on a", scene.background, "background"]
    phrase = " ".join(words)
    if rng.random() < 0.5:  # textual inversion's templates (style ones too for a nickname without a shape)
        templates = OBJECT_TEMPLATES + (STYLE_TEMPLATES if "shape" not in fixed else [])
        return rng.choice([t for t in templates if not set(t.split()) & set(SIZES)]).format(phrase)
    return _article(phrase)


def nickname_scene(word: str, fixed: dict, rng: random.Random) -> Scene:
    """A scene pretraining may see that fits the nickname (its open attributes drawn as usual)."""
    while True:
        scene = dataclasses.replace(draw_scene(rng), **fixed)
        if is_pretraining_scene(scene):
            return scene


def draw_scene(rng: random.Random) -> Scene:
    """One scene, every factor drawn independently (named concepts and test scenes included)."""
    colour = rng.choice(tuple(COLOURS))
    dot = "none" if rng.random() < 0.6 else rng.choice([c for c in COLOURS if c != colour])
    return Scene(shape=rng.choice(SHAPES), colour=colour, size=rng.choice(tuple(SIZES)),
                 position=rng.choice(tuple(POSITIONS)), background=rng.choice(tuple(BACKGROUNDS)),
                 pattern=rng.choice(PATTERNS), ears=rng.random() < 0.35, dot=dot)


def is_test_scene(scene: Scene) -> bool:
    """One scene in ten (by a hash of its attributes) is kept out of pretraining for the quality check."""
    digest = hashlib.sha256(repr(scene.key()).encode()).digest()
    return digest[0] % 10 == 0


def is_pretraining_scene(scene: Scene) -> bool:
    return not is_test_scene(scene) and not any(c.matches(scene) for c in CONCEPTS.values())


def pretraining_scenes(seed: int) -> Iterator[Scene]:
    """An endless stream of scenes pretraining may see: no test scene, no named concept."""
    rng = random.Random(f"pretrain-{seed}")
    while True:
        scene = draw_scene(rng)
        if is_pretraining_scene(scene):
            yield scene


def test_scenes(count: int = 200, seed: int = 0) -> list[Scene]:
    """`count` scenes pretraining never saw (held out by hash, and distinct), from a fixed seed."""
    rng = random.Random(f"test-{seed}")
    found: dict[tuple, Scene] = {}
    while len(found) < count:
        scene = draw_scene(rng)
        if is_test_scene(scene) and not any(c.matches(scene) for c in CONCEPTS.values()):
            found.setdefault(scene.key(), scene)
    return list(found.values())


def training_caption(scene: Scene, rng: random.Random) -> str:
    """A caption as pretraining shows it: usually complete, sometimes without the size, position or
    background (so a prompt that leaves them out is in distribution), sometimes inside one of textual
    inversion's prompt templates (so their words are known), and empty one time in ten (for guidance)."""
    if rng.random() < 0.1:
        return ""
    keep = dict(size=rng.random() > 0.2, position=rng.random() > 0.3, background=rng.random() > 0.3)
    if rng.random() < 0.4:
        template = rng.choice(OBJECT_TEMPLATES + STYLE_TEMPLATES)
        if any(word in template.split() for word in SIZES):
            keep["size"] = False  # "a photo of the small {}" already says a size
        return template.format(describe(scene, **keep))
    return _article(describe(scene, **keep))


# Prompts that move a concept into contexts its images never show, and what a real render of each
# looks like: the concept's scene with these attributes changed (CLIP-T's reference).
CONTEXTS = {
    "a photo of a {} on a teal background": {"background": "teal"},
    "a photo of a {} on a pink background": {"background": "pink"},
    "a photo of a {} at the top left": {"position": "top left"},
    "a photo of a {} at the bottom right": {"position": "bottom right"},
    "a photo of a {} at the center on a brown background": {"position": "center", "background": "brown"},
    "a photo of a {} at the top on a cyan background": {"position": "top", "background": "cyan"},
}
