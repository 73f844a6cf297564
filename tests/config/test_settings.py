"""Typed settings: the field types and bounds are the checks, with one line that names the key."""

from __future__ import annotations

import pytest

from conftest import compose
from ti_experiments.errors import TIError
from ti_experiments.training.settings import HardwareSettings, TrainSettings


def test_the_composed_groups_become_typed_settings():
    cfg = compose("+concept=cat_toy", "hardware=low_vram")
    train, hardware = TrainSettings.from_node(cfg.train), HardwareSettings.from_node(cfg.hardware)
    assert (train.max_steps, train.batch_size, train.gradient_accumulation_steps) == (3000, 1, 4)
    assert hardware.mixed_precision == "fp16" and hardware.offload_idle and hardware.attention == "xformers"
    assert train.saves_at(500) and not train.saves_at(499) and not TrainSettings(save_steps=None).saves_at(500)


@pytest.mark.parametrize(("values", "message"), [
    ({"attention": "flash"}, "hardware.attention='flash' is unknown; fix: use sdpa, xformers or default"),
    ({"mixed_precision": "fp8"}, "hardware.mixed_precision='fp8' is unknown; fix: use no, fp16 or bf16"),
    ({"channels_last": "yes"}, "hardware.channels_last='yes' is not true or false"),
    ({"batch_size": 0}, "hardware.batch_size=0 is not an integer >= 1; fix: use e.g. hardware.batch_size=1"),
])
def test_bad_hardware_values_are_one_line_errors(values, message):
    with pytest.raises(TIError) as err:
        HardwareSettings(**values)
    assert str(err.value).startswith(message)


def test_an_unknown_key_is_named():
    with pytest.raises(TIError, match=r"train\.max_stpes is not a setting of train"):
        TrainSettings.from_node({"max_stpes": 3})
