"""Validation images: saved under the run, sent to the tracker at the global step, free to turn off."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.errors import TIError
from ti_experiments.experiment import run

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each

FAST_VALIDATION = ["validation.enabled=true", "validation.steps=2", "validation.num_images=2",
                   "validation.num_inference_steps=2"]


def _run(tmp_path, *overrides):
    return run(compose(*TINY_RUN, *overrides, output_dir=tmp_path))


def test_images_are_saved_per_step_and_prompt(tmp_path):
    run_dir = _run(tmp_path, *FAST_VALIDATION, "train.max_steps=3",
                   "validation.prompts=['a <demo-toy> train','a photo of <demo-toy>']")
    steps = sorted(p.name for p in (run_dir / "validation").iterdir())
    assert steps == ["step-2", "step-3"]  # every 2 steps, and once at the end
    files = sorted(p.name for p in (run_dir / "validation" / "step-3").iterdir())
    assert files == ["00-00.png", "00-01.png", "01-00.png", "01-01.png"]
    assert Image.open(run_dir / "validation" / "step-3" / "00-00.png").size == (32, 32)


def test_validation_is_reproducible_and_does_not_change_training(tmp_path):
    on = _run(tmp_path / "on", *FAST_VALIDATION)
    off = _run(tmp_path / "off")
    again = _run(tmp_path / "again", *FAST_VALIDATION)
    emb = lambda d: load_file(d / "learned_embeds.safetensors")["<demo-toy>"]  # noqa: E731
    assert torch.equal(emb(on), emb(off))
    assert not (off / "validation").exists()
    png = lambda d: (d / "validation" / "step-4" / "00-01.png").read_bytes()  # noqa: E731
    assert png(on) == png(again)


def test_validation_without_a_prompt_is_refused(tmp_path):
    with pytest.raises(TIError, match="no prompt"):
        _run(tmp_path, *FAST_VALIDATION, "concept.validation_prompt=null")


def test_images_reach_wandb_offline_with_their_prompt(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    logged = []
    original = wandb.Run.log

    def spy(self, data, *args, **kwargs):
        logged.append((kwargs.get("step"), data))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", spy)
    run_dir = _run(tmp_path, *FAST_VALIDATION, "logger=wandb", "train.max_steps=2")
    images = [(step, data["validation"]) for step, data in logged if "validation" in data]
    assert [step for step, _ in images] == [2]  # the global step, not an epoch index
    assert len(images[0][1]) == 2 and all(isinstance(i, wandb.Image) for i in images[0][1])
    assert {i._caption for i in images[0][1]} == {"a photo of a <demo-toy>"}  # the demo concept's validation_prompt
    # the tracker's own files: the offline run stored both images
    assert len(list((run_dir / "wandb").glob("offline-run-*/files/media/images/validation_2_*.png"))) == 2


def test_wandb_disabled_still_keeps_the_images_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = _run(tmp_path, *FAST_VALIDATION, "logger=wandb", "train.max_steps=2")
    assert len(list((run_dir / "validation" / "step-2").glob("*.png"))) == 2
    assert not list(run_dir.glob("wandb/offline-run-*"))


def test_images_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _run(tmp_path, *FAST_VALIDATION, "logger=tensorboard", "train.max_steps=2")
    tags = set()
    for path in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path.parent), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert any(t.startswith("validation/00") for t in tags)
