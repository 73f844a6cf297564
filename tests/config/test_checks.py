"""Values of the wrong type or out of range are refused before anything loads, naming the key."""

from __future__ import annotations

import pytest

from ti_experiments.config.checks import check_config
from ti_experiments.errors import TIError

from conftest import TINY_RUN, compose


@pytest.mark.parametrize(("override", "key"), [
    ("seed=abc", "seed"),
    ("seed=-1", "seed"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.max_steps=2.5", "train.max_steps"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.gradient_accumulation_steps=-2", "train.gradient_accumulation_steps"),
    ("train.save_steps=-1", "train.save_steps"),
    ("train.checkpointing_steps=ten", "train.checkpointing_steps"),
    ("train.checkpoints_total_limit=0", "train.checkpoints_total_limit"),
    ("train.scale_lr=maybe", "train.scale_lr"),
    ("optimizer.lr=-1e-3", "optimizer.lr"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=abc", "optimizer.lr"),
    ("optimizer.lr=true", "optimizer.lr"),
])
def test_a_bad_value_is_refused_with_its_key(override, key):
    with pytest.raises(TIError, match=key.replace(".", r"\.")) as err:
        check_config(compose(*TINY_RUN, override))
    assert "use e.g." in err.value.fix


@pytest.mark.parametrize("override", ["train.save_steps=null", "train.save_steps=0", "train.checkpointing_steps=null",
                                      "train.checkpoints_total_limit=2", "seed=0", "optimizer.lr=1"])
def test_good_values_pass(override):
    check_config(compose(*TINY_RUN, override))


# -- every leaf of every option: a wrong type and an out-of-range value, each one line naming the key --

def _leaves(node, prefix=""):
    """(dotted key, value) of every setting: scalars, lists, and the concept's source node as one value."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path != "concept.source":
            yield from _leaves(value, path + ".")
        elif not str(key).startswith("_"):
            yield path, value


def _field(path: str):
    """The typed field that owns a config key (None: no settings class declares it)."""
    from dataclasses import fields

    from ti_experiments.config.checks import GROUPS, RunSettings

    group, _, name = path.rpartition(".")
    cls = GROUPS.get(group, RunSettings if not group else None)
    return next((f for f in fields(cls) if f.name == name), None) if cls else None


def _wrong_type(annotation: str):
    """A value of another type than the annotation allows."""
    if annotation.startswith("Literal"):
        return "nonsense"
    if annotation.startswith(("bool", "int", "float")):
        return "maybe" if annotation.startswith("bool") else "abc"
    if annotation.startswith(("list", "dict")):
        return 5
    return [1, 2]  # a string's place


def _configs():
    """(name, composed config, the key prefix whose leaves to feed): the default config whole, then each
    option of each group with its own group's leaves (the rest is the default's)."""
    from ti_experiments.config import options

    yield "default", compose("+concept=demo"), ""
    for group in ("concept", "model", "data", "optimizer", "lr_scheduler", "hardware", "logger", "evaluation",
                  "hub", "experiment"):
        for option in options(group):
            prefix = "+" if group in ("concept", "experiment") else ""
            base = [] if group == "concept" else ["+concept=demo"]
            # an experiment preset is a global diff: all its leaves
            yield (f"{group}={option}", compose(*base, f"{prefix}{group}={option}"),
                   "" if group == "experiment" else group + ".")


def test_every_leaf_of_every_option_is_owned_and_checked_by_type_and_range():
    from omegaconf import OmegaConf

    from ti_experiments.config.checks import check_config

    checked = 0
    for name, cfg, prefix in _configs():
        check_config(cfg)  # every shipped option is valid as it is
        raw = OmegaConf.to_container(cfg, resolve=False)
        for key, value in _leaves(raw):
            field = _field(key)
            assert field is not None, f"{name}: {key} has no typed setting, so nothing checks it"
            if not key.startswith(prefix) or isinstance(value, str) and "${" in value:
                continue  # an interpolation: the key it reads from is fed the bad values
            annotation = str(field.type)
            bad = [_wrong_type(annotation)]
            meta = field.metadata
            if meta.get("minimum") is not None:
                bad.append(meta["minimum"] - 1)
            elif meta.get("positive"):
                bad.append(0)
            for value in bad:
                broken = cfg.copy()
                OmegaConf.update(broken, key, value, merge=False)
                with pytest.raises(TIError) as err:
                    check_config(broken)
                assert err.value.problem.startswith((f"{key}=", f"{key} ")), f"{name}: {key}={value!r}: {err.value}"
                assert err.value.fix, f"{name}: {key}"
                checked += 1
    assert checked > 300


def test_validation_and_generate_draw_at_the_models_own_guidance():
    from ti_experiments.models.generation import base_model

    assert check_config(compose("+concept=demo")).validation.guidance_scale == 4.0  # the toy world's best
    assert check_config(compose("+concept=cat_toy")).validation.guidance_scale == 7.5  # SD 1.5's
    assert check_config(compose("+concept=demo", "validation.guidance_scale=6")).validation.guidance_scale == 6
    assert base_model("toyworld", []).guidance == 4.0


@pytest.mark.parametrize(("token", "message"), [
    ("<" + "x" * 298 + ">", "is 300 characters long, more than 100"),
    ("<a\x00b>", "control or unprintable character '\\\\x00'"),
    ("<a\nb>", "empty or contains spaces"),
    ("<a\x1bb>", "control or unprintable character"),
    ("<a\u200bb>", "control or unprintable character"),
])
def test_a_placeholder_a_prompt_or_file_name_cannot_carry_is_refused_before_training(token, message):
    from omegaconf import OmegaConf

    cfg = compose(*TINY_RUN)
    OmegaConf.update(cfg, "concept.placeholder_token", token)
    with pytest.raises(TIError, match=rf"concept.placeholder_token .*{message}.*; fix: use one word"):
        check_config(cfg)


def test_num_vectors_is_checked_once_where_the_concept_declares_it():
    """(Moved from the embeddings' own check: the concept's settings are the one place.)"""
    with pytest.raises(TIError, match=r"concept.num_vectors=0 is not an integer >= 1; fix: use e.g. concept.num_vectors=1"):
        check_config(compose(*TINY_RUN, "concept.num_vectors=0"))
