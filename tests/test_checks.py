"""Values of the wrong type or out of range are refused before anything loads, naming the key."""

from __future__ import annotations

import pytest

from ti_experiments.checks import check_run_settings
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
        check_run_settings(compose(*TINY_RUN, override))
    assert "use e.g." in err.value.fix


@pytest.mark.parametrize("override", ["train.save_steps=null", "train.save_steps=0", "train.checkpointing_steps=null",
                                      "train.checkpoints_total_limit=2", "seed=0", "optimizer.lr=1"])
def test_good_values_pass(override):
    check_run_settings(compose(*TINY_RUN, override))
