"""Training prompts: placeholder substitution, per-image captions, and [filewords] templates."""

from __future__ import annotations

import random

import pytest

from ti_experiments.data.images import DataSettings
from ti_experiments.data.templates import TEMPLATES, Prompts, fill, has_placeholder, with_filewords
from ti_experiments.errors import TIError

MULTI = "<x> <x>_1 <x>_2"


@pytest.mark.parametrize("text,want", [
    ("a photo of {}", "a photo of <x> <x>_1 <x>_2"),
    ("a [name] on a table", "a <x> <x>_1 <x>_2 on a table"),
    ("a <x> on a table", "a <x> <x>_1 <x>_2 on a table"),  # a caption naming the placeholder gets every vector
    ("a <x> <x>_1 <x>_2 here", "a <x> <x>_1 <x>_2 here"),  # already complete: not expanded twice
    ("a <xy> and {0} and {curly}", "a <xy> and {0} and {curly}"),  # other words and braces are left alone
])
def test_fill_puts_every_vector_where_the_text_names_the_concept(text, want):
    assert fill(text, MULTI) == want
    assert has_placeholder(text, MULTI) == (text != want or "<x>" in text)


def test_file_captions_substitute_or_prepend_the_placeholder():
    prompts = Prompts("file", [], "<x>", ["a photo of [name] on grass", "a red hat, studio light", None])
    rng = random.Random(0)
    assert prompts(rng, 0) == "a photo of <x> on grass"
    assert prompts(rng, 1) == "<x>, a red hat, studio light"
    assert prompts(rng, 2) == "<x>"


def test_filewords_templates_mix_the_template_and_the_caption():
    templates = with_filewords(TEMPLATES["object"])
    assert templates[0] == "a photo of a {}, [filewords]" and len(templates) == len(TEMPLATES["object"])
    prompts = Prompts("filewords", templates, MULTI, ["red hat, on a table", None])
    seen = {prompts(random.Random(s), 0) for s in range(200)}
    assert "a photo of a <x> <x>_1 <x>_2, red hat, on a table" in seen
    assert all(t.endswith(", red hat, on a table") for t in seen)
    # no caption: the template alone, without a dangling comma
    assert {prompts(random.Random(s), 1) for s in range(200)} == {fill(t, MULTI) for t in TEMPLATES["object"]}
    mixed = Prompts("filewords", ["[filewords] by [name]", "a photo of {}"], "<x>", ["a cat"])
    assert {mixed(random.Random(s), 0) for s in range(50)} == {"a cat by <x>", "a photo of <x>"}


def test_without_captions_the_prompts_are_the_ones_drawn_before():
    prompts = Prompts("none", TEMPLATES["style"], MULTI)
    for seed in range(50):
        assert prompts(random.Random(seed), 0) == random.Random(seed).choice(TEMPLATES["style"]).format(MULTI)


@pytest.mark.parametrize("kwargs,message", [
    ({"captions": "sometimes"}, "data.captions='sometimes' is unknown"),
    ({"caption_extension": "txt"}, "not a file extension"),
    ({"templates": ["a photo"]}, "a template without the concept"),
    ({"templates": []}, "no template"),
    ({"captions": "filewords", "templates": ["a photo of {}"]}, r"no template of data.templates has \[filewords\]"),
])
def test_bad_caption_settings_are_refused(kwargs, message):
    with pytest.raises(TIError, match=message):
        DataSettings(**kwargs)
