"""The toy world: deterministic scenes and captions, and what pretraining may and may not see."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from ti_experiments.toyworld import world


def test_render_is_deterministic_and_32px():
    scene = world.Scene("triangle", "red", "large", "top left", "navy", "striped", ears=True, dot="yellow")
    a, mask_a = world.render(scene, random.Random(1))
    b, mask_b = world.render(scene, random.Random(1))
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(mask_a, mask_b)
    # the object is where the caption says: its coverage is centred in the top-left cell
    ys, xs = np.nonzero(mask_a > 0.5)
    assert xs.mean() < 14 and ys.mean() < 14


@pytest.mark.parametrize("attribute", ["shape", "colour", "size", "position", "background", "pattern"])
def test_every_attribute_changes_the_picture(attribute):
    base = world.Scene("square", "blue", "medium", "center", "gray", "plain")
    values = world.ATTRIBUTES[attribute]
    other = next(v for v in values if v != getattr(base, attribute))
    changed = world.Scene(**{**base.__dict__, attribute: other})
    assert not np.array_equal(np.asarray(world.render(base)[0]), np.asarray(world.render(changed)[0]))


def test_caption_names_every_attribute_in_known_words():
    scene = world.Scene("cross", "white", "small", "bottom right", "teal", "plain", ears=True, dot="red")
    text = world.caption(scene)
    assert text == "a small white plain cross with ears and a red dot at the bottom right on a teal background"
    assert set(text.split()) <= set(world.WORDS)


def test_pretraining_never_sees_a_concept_or_a_test_scene():
    scenes = list(itertools.islice(world.pretraining_scenes(0), 5000))
    assert not any(c.matches(s) for s in scenes for c in world.CONCEPTS.values())
    held_out = {s.key() for s in world.test_scenes(200)}
    assert len(held_out) == 200 and not held_out & {s.key() for s in scenes}
    # and the stream still covers every value of every attribute
    for name, values in world.ATTRIBUTES.items():
        seen = {s.labels()[name] for s in scenes}
        assert seen == set(range(len(values))), name


def test_concept_images_share_the_fixed_parts_and_vary_the_rest():
    concept = world.CONCEPTS["demo"]
    scenes = concept.scenes(6)
    assert all(concept.matches(s) for s in scenes)
    assert len({s.position for s in scenes}) > 1 and len({s.background for s in scenes}) > 1
    assert concept.description() == "large orange plain circle with ears and a purple dot"


def test_training_captions_leave_out_and_wrap_but_stay_in_the_vocabulary():
    from ti_experiments.models.tiny import tokenizer_words

    rng = random.Random(0)
    scenes = list(itertools.islice(world.pretraining_scenes(1), 500))
    captions = [world.training_caption(s, rng) for s in scenes]
    assert 0.05 < sum(c == "" for c in captions) / len(captions) < 0.15
    assert any(c.startswith("a photo of") for c in captions)
    words = set(tokenizer_words())
    assert {w for c in captions for w in c.replace("-", " ").split()} <= words


def test_nicknames_are_known_words_that_stay_away_from_every_concept():
    from ti_experiments.models.tiny import tokenizer_words

    table = world.nicknames()
    assert table == world.nicknames() and set(table) == set(world.NICKNAMES)
    assert set(table) <= set(tokenizer_words()) and not set(table) & set(world.WORDS)
    for word, fixed in table.items():
        for concept in world.CONCEPTS.values():
            assert sum(fixed.get(k, v) != v for k, v in concept.fixed.items()) >= 2, (word, concept.name)
    # some stand for an object (a shape among their attributes), some for a style (no shape)
    assert any("shape" in f for f in table.values()) and any("shape" not in f for f in table.values())


def test_a_nickname_scene_fits_its_nickname_and_its_caption_uses_known_words():
    from ti_experiments.models.tiny import tokenizer_words

    table, rng, words = world.nicknames(), random.Random(0), set(tokenizer_words())
    for word, fixed in itertools.islice(table.items(), 20):
        scene = world.nickname_scene(word, fixed, rng)
        assert world.is_pretraining_scene(scene)
        assert all(getattr(scene, k) == v for k, v in fixed.items())
        text = world.nickname_caption(scene, word, fixed, rng)
        assert word in text.split() and set(text.replace("-", " ").split()) <= words
        # the nickname says what it fixes: no colour, shape or pattern word beside it
        assert not set(text.split()) & (set(world.COLOURS) | set(world.SHAPES) | set(world.PATTERNS))


def test_every_named_concept_has_a_preset_that_draws_it():
    """The quality check trains each concept through its preset (token, initializer word, property)."""
    from conftest import compose

    for name, concept in world.CONCEPTS.items():
        preset = compose(f"+concept={name}").concept
        assert preset.source.name == name
        assert preset.learnable_property == ("object" if "shape" in concept.fixed else "style")
        assert preset.initializer_token in concept.description().split()  # a word for one of its parts
