"""Pretraining: a stage stopped and resumed continues exactly (its optimizer too, read back without
pickles); the command builds a loadable model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ti_experiments_dev.toyworld import architecture, pretraining


def _vae_stage(work):
    vae = architecture.vae(0)
    settings = pretraining.StageSettings(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                                         ema_decay=0.9)
    stage = pretraining.Stage("vae", work, {"vae": vae}, settings, seed=0)
    return stage, pretraining.vae_step(vae, 2, 1e-3, 4.0)


def test_a_stage_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_does(tmp_path):
    straight, step = _vae_stage(tmp_path / "a")
    straight.run(step)
    first, step = _vae_stage(tmp_path / "b")
    first.run(step, until=2)
    assert first.step == 2
    # the checkpoint is data: safetensors and JSON, the optimizer's moments included (nothing pickled)
    assert sorted(p.name for p in (tmp_path / "b" / "vae" / "checkpoint").iterdir()) == ["state.json",
                                                                                       "weights.safetensors"]
    resumed, step = _vae_stage(tmp_path / "b")  # a new process: everything comes from the checkpoint
    assert resumed.step == 2
    resumed.run(step)
    for name, value in straight.modules["vae"].state_dict().items():
        assert torch.equal(value, resumed.modules["vae"].state_dict()[name]), name
    for name, value in straight.ema["vae"].items():
        assert torch.equal(value, resumed.ema["vae"][name]), name
    rows = [json.loads(r) for r in (tmp_path / "b" / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] or [r["step"] for r in rows] == [4]


@pytest.mark.slow
def test_the_pretrain_command_builds_a_model_diffusers_loads(tmp_path):
    work, ship = tmp_path / "work", tmp_path / "ship"
    args = [sys.executable, "-m", "ti_experiments_dev.pretrain", f"work_dir={work}", f"ship_dir={ship}",
            "vae.steps=2", "vae.batch_size=2", "generator.steps=2", "generator.batch_size=2",
            "judge.steps=2", "judge.batch_size=4", "classifier.steps=2", "classifier.batch_size=4",
            "generator.warmup_steps=1", "judge.warmup_steps=1", "classifier.warmup_steps=1",
            "generator.restarts=[]", "generator.nicknames_from=1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((ship / "manifest.json").read_text())
    assert manifest["stages"]["classifier"]["steps"] == 2 and "model/unet/diffusion_pytorch_model.safetensors" in manifest["sha256"]
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resumed at step 2" in again.stdout + again.stderr

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ship / "model")
    assert pipe.unet.dtype == torch.float32  # stored in half precision, loaded as the user's default
    image = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_a_restart_extends_a_finished_schedule_without_changing_its_past(tmp_path):
    def stage(steps=100, **extra):
        settings = pretraining.StageSettings(steps=steps, batch_size=1, lr=1.0, warmup_steps=10, **extra)
        return pretraining.Stage("s", tmp_path, {"m": torch.nn.Linear(1, 1)}, settings, seed=0)

    short, extended = stage(), stage(steps=300, restarts=(100,))
    assert [extended.lr_at(s) for s in range(100)] == [short.lr_at(s) for s in range(100)]
    assert extended.lr_at(99) == pytest.approx(0.1, abs=1e-3) and extended.lr_at(100) == pytest.approx(0.1)
    assert extended.lr_at(109) == 1.0 and extended.lr_at(299) == pytest.approx(0.1, abs=1e-3)


def test_nicknames_change_the_generator_batches_only_from_their_first_step(tmp_path):
    from diffusers import DDPMScheduler

    tokenizer = architecture.write_tokenizer(tmp_path)
    vae = architecture.vae(0).eval().requires_grad_(False)
    text_encoder, unet = architecture.text_encoder(tokenizer, 2), architecture.unet(3)
    scheduler = DDPMScheduler.from_config(architecture.scheduler_config())

    def losses(nicknames):
        step = pretraining.generator_step(vae, text_encoder, unet, tokenizer, scheduler, 4, nicknames, seed=0)
        with torch.no_grad():
            return [step(s, pretraining.batch_rng(0, "generator", s))[0].item() for s in (0, 1)]

    plain, named = losses(None), losses(pretraining.Nicknames(start=1, share=0.5))
    assert plain[0] == named[0] and plain[1] != named[1]
    quarter = pretraining.Nicknames(start=1, share=0.25)
    assert quarter.count(0, 64) == 0 and quarter.count(1, 64) == 16
