"""Checkpoints are data: written as safetensors + JSON, read without unpickling anything; a checkpoint in
the old (pickled) format, one without the embedding and one with NaN rows are refused in one line."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_RUN, Payload, compose
from ti_experiments.errors import TIError
from ti_experiments.experiment import run

pytestmark = pytest.mark.train


def _train(folder, *overrides):
    return run(compose(*TINY_RUN, *overrides, output_dir=folder))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    _train(folder, "train.checkpointing_steps=1", "train.max_steps=2")
    return folder


def test_a_checkpoint_holds_no_pickle(trained):
    checkpoint = trained / "checkpoint-2"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["rng-0.json", "rng-0.safetensors", "state.json", "state.safetensors", "stopping.json",
                     "stopping_kept.safetensors", "trainer_state.json"]
    numbers = json.loads((checkpoint / "state.json").read_text())
    assert numbers["lr_scheduler"]["last_epoch"] == 2 and numbers["optimizer"]["param_groups"][0]["params"] == [0]
    tensors = load_file(checkpoint / "state.safetensors")
    assert tensors["vectors.0"].shape == (1, 32) and "optimizer.0.exp_avg" in tensors


def _old_format_copy(trained, tmp_path):
    """The run as an earlier version (Accelerate's save_state) left it, with a crafted scheduler pickle."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    checkpoint = folder / "checkpoint-2"
    for name in ("state.json", "state.safetensors", "rng-0.json", "rng-0.safetensors"):
        (checkpoint / name).unlink()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state.pop("format")
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    marker = tmp_path / "pwned"
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"state": {}, "param_groups": []}, checkpoint / "optimizer.bin")
    return folder, marker


def test_an_old_checkpoint_with_a_malicious_pickle_is_refused_and_runs_nothing(trained, tmp_path):
    folder, marker = _old_format_copy(trained, tmp_path)
    with pytest.raises(TIError, match=r"older format \(custom_checkpoint_0.pkl, optimizer.bin\).*not loaded; "
                                      r"fix: .*concept.init_from="):
        _train(folder, "train.max_steps=3", "train.resume_from_checkpoint=latest")
    assert not marker.exists()
    assert json.loads((folder / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("damage", ["no embedding", "nan rows", "wrong shape"])
def test_a_checkpoint_without_a_usable_embedding_is_refused(trained, tmp_path, damage):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    path = folder / "checkpoint-2" / "state.safetensors"
    tensors = load_file(path)
    if damage == "no embedding":
        del tensors["vectors.0"]
    elif damage == "nan rows":
        tensors["vectors.0"] = torch.full_like(tensors["vectors.0"], float("nan"))
    else:
        tensors["vectors.0"] = torch.zeros(3, 32)
    save_file(tensors, str(path))
    with pytest.raises(TIError, match=r"checkpoint-2 is corrupt or incomplete .*fix: resume from the previous one") \
            as caught:
        _train(folder, "train.max_steps=3", "train.resume_from_checkpoint=latest")
    assert "optimizer.lr" not in str(caught.value)  # a broken file, not the learning rate
    assert not (folder / "learned_embeds-steps-3.safetensors").exists()


def test_the_resumed_run_continues_exactly(trained, tmp_path):
    straight = _train(tmp_path / "straight", "train.checkpointing_steps=1", "train.max_steps=3")
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(trained, resumed)
    _train(resumed, "train.checkpointing_steps=1", "train.max_steps=3", "train.resume_from_checkpoint=latest")
    a, b = (load_file(d / "learned_embeds.safetensors")["<demo-toy>"] for d in (straight, resumed))
    assert torch.equal(a, b)


def test_a_run_resumed_in_a_later_epoch_continues_exactly(tmp_path):
    """Accelerate's loader tells the sampler its own count of passes, which a resumed run starts again at
    0: the loop must tell it the epoch, or the run resumed in its second epoch (12 items: 6 images x 2
    repeats) draws the first epoch's items again."""
    args = ("evaluation=none", "train.save_steps=null", "train.checkpointing_steps=13")
    straight = _train(tmp_path / "straight", *args, "train.max_steps=15")
    resumed = _train(tmp_path / "resumed", *args, "train.max_steps=13")
    _train(resumed, *args, "train.max_steps=15", "train.resume_from_checkpoint=latest")
    a, b = (load_file(d / "learned_embeds.safetensors")["<demo-toy>"] for d in (straight, resumed))
    assert a.numpy().tobytes() == b.numpy().tobytes()
