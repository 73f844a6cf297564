"""Short tiny-model runs in process: outputs, frozen rows, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel

import ti_experiments.experiment as experiment
from conftest import TINY_RUN, compose
from ti_experiments.experiment import run

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each


def _train(tmp_path, *overrides):
    return run(compose(*TINY_RUN, *overrides, output_dir=tmp_path))


def test_run_writes_the_concept_files(tmp_path):
    run_dir = _train(tmp_path, "concept.num_vectors=2")
    embeds = load_file(run_dir / "learned_embeds.safetensors")
    assert list(embeds) == ["<demo-toy>"]
    assert embeds["<demo-toy>"].shape == (2, 32) and embeds["<demo-toy>"].dtype == torch.float32
    assert (run_dir / "token_identifier.txt").read_text() == "<demo-toy>"
    assert (run_dir / "type_of_concept.txt").read_text() == "object"
    assert sorted(p.name for p in run_dir.glob("learned_embeds-steps-*")) == [
        "learned_embeds-steps-2.safetensors", "learned_embeds-steps-4.safetensors"]
    assert torch.equal(load_file(run_dir / "learned_embeds-steps-4.safetensors")["<demo-toy>"],
                       embeds["<demo-toy>"])
    assert not list(run_dir.glob(".*.tmp"))


def test_training_changes_only_the_new_rows(tmp_path, tiny_model_path, monkeypatch):
    captured = {}
    original = experiment.unsplice

    def capture(text_encoder):
        original(text_encoder)
        captured["te"] = text_encoder

    monkeypatch.setattr(experiment, "unsplice", capture)
    run_dir = _train(tmp_path, "optimizer.lr=0.05")
    fresh = CLIPTextModel.from_pretrained(tiny_model_path, subfolder="text_encoder").state_dict()
    trained = captured["te"].state_dict()
    key = next(k for k in fresh if k.endswith("token_embedding.weight"))
    vocab = fresh[key].shape[0]
    assert trained[key].shape[0] == vocab + 1
    assert torch.equal(trained[key][:vocab], fresh[key])  # bit-identical frozen rows
    for name, value in fresh.items():
        if name != key:
            assert torch.equal(trained[name], value), name
    learned = load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"]
    assert torch.equal(trained[key][vocab:], learned)
    toy = fresh[key][vocab - 1]  # not the initializer: just check the row moved away from its start
    init_row = captured["te"].get_input_embeddings().weight[vocab]
    assert not torch.equal(init_row, toy)


def test_learning_rate_scaling_and_accumulation(tmp_path, monkeypatch):
    seen = {}
    original = torch.optim.AdamW.__init__

    def spy(self, params, lr=1e-3, **kw):
        seen["lr"] = lr
        original(self, params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    _train(tmp_path, "train.gradient_accumulation_steps=3", "train.batch_size=2", "train.scale_lr=true",
           "optimizer.lr=1e-3", "train.max_steps=2", "train.checkpointing_steps=null")
    assert seen["lr"] == pytest.approx(1e-3 * 3 * 2)


def test_checkpoint_limit_keeps_the_newest(tmp_path):
    run_dir = _train(tmp_path, "train.max_steps=3", "train.checkpointing_steps=1",
                     "train.checkpoints_total_limit=2")
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (run_dir / "checkpoint-3" / "state.safetensors").stat().st_size < 10_000  # rows only


def test_resume_continues_to_the_same_embedding(tmp_path):
    common = ["train.gradient_accumulation_steps=2", "data.repeats=3", "train.checkpointing_steps=3",
              "lr_scheduler=constant_with_warmup", "lr_scheduler.num_warmup_steps=4"]
    straight = _train(tmp_path / "a", *common, "train.max_steps=6")
    _train(tmp_path / "b", *common, "train.max_steps=3")  # stops at checkpoint-3, mid-epoch
    resumed = _train(tmp_path / "b", *common, "train.max_steps=6", "train.resume_from_checkpoint=latest")
    a = load_file(straight / "learned_embeds.safetensors")["<demo-toy>"]
    b = load_file(resumed / "learned_embeds.safetensors")["<demo-toy>"]
    assert torch.equal(a, b)
    assert (resumed / "checkpoint-6").is_dir()


def test_resume_from_a_checkpoint_of_another_concept_is_refused(tmp_path):
    from ti_experiments.errors import TIError

    _train(tmp_path / "a", "train.max_steps=2")
    with pytest.raises(TIError, match="placeholder_tokens"):
        _train(tmp_path / "b", "concept.num_vectors=2", f"train.resume_from_checkpoint={tmp_path / 'a'}")


def test_tensorboard_receives_loss_and_lr(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _train(tmp_path, "logger=tensorboard", "train.max_steps=2")
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for path in events:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "lr"} <= tags


def test_prediction_target_follows_the_scheduler():
    from diffusers import DDPMScheduler

    from ti_experiments.errors import TIError
    from ti_experiments.training.loss import prediction_target

    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    eps = DDPMScheduler(prediction_type="epsilon")
    v = DDPMScheduler(prediction_type="v_prediction")
    assert torch.equal(prediction_target(eps, latents, noise, t), noise)
    alpha = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(prediction_target(v, latents, noise, t), alpha * noise - sigma * latents, atol=1e-6)
    with pytest.raises(TIError, match="sample"):
        prediction_target(DDPMScheduler(prediction_type="sample"), latents, noise, t)


def test_bf16_and_gradient_checkpointing_keep_the_learned_rows_fp32(tmp_path):
    run_dir = _train(tmp_path, "hardware.mixed_precision=bf16", "hardware.gradient_checkpointing=true",
                     "hardware.offload_idle=true", "train.max_steps=2")
    learned = load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"]
    assert learned.dtype == torch.float32 and torch.isfinite(learned).all()


def test_the_first_step_encodes_only_its_own_images_and_the_encoder_leaves_once_all_are_cached(tmp_path):
    import time

    from ti_experiments.config.checks import check_config
    from ti_experiments.experiment import fit, make_accelerator, prepare, reset_accelerate

    for validation in ("false", "true"):
        out = tmp_path / validation
        out.mkdir()
        cfg = compose(*TINY_RUN, "train.max_steps=2", f"validation.enabled={validation}", "validation.steps=null",
                      "validation.num_inference_steps=1", "validation.num_images=1", "evaluation.enabled=false",
                      output_dir=out)
        p = prepare(check_config(cfg), out)
        assert not isinstance(p.parts._unet, torch.nn.Module)  # not loaded yet
        seen = {}

        class AtStepEnd:  # a metrics log that looks at the VAE when each step ends
            def __init__(self, start_step):
                pass

            def log(self, step, values):
                vae = p.parts.vae
                seen[step] = (time.perf_counter(), vae is not None and vae.encoder is not None,
                              vae is not None and vae.decoder is not None)
                return {"lr": values["lr"], "steps_per_sec": None}

        accelerator = make_accelerator(p.settings.hardware, p.settings.logger, out)
        try:
            validator = None
            if validation == "true":
                from ti_experiments.evaluation.validation import Validator
                validator = Validator(p.settings.validation, p.parts, p.parts.text_encoder, accelerator,
                                      p.settings.logger, out)
            result = fit(p, accelerator, AtStepEnd, validator)
        finally:
            reset_accelerate()
        cache = result.trained_with.cache
        step_1_end, encoder, decoder = seen[1]
        assert sum(end < step_1_end for end, _ in cache.encoded_at) == 1  # batch 1: one image before step 1
        assert encoder and decoder == (validation == "true")  # no decoder kept that nothing needs
        assert cache.full and len(cache.encoded_at) == 12  # 6 images and their mirror images, each once
        assert isinstance(p.parts.unet, torch.nn.Module)
        assert seen[2][1:] == (False, validation == "true")  # the encoder left after step 1
        if validation == "false":
            assert p.parts.vae is None  # nothing needs it any more
        else:
            assert p.parts.vae.encoder is None and p.parts.vae.decoder is not None
            assert (out / "validation" / "step-2" / "00-00.png").exists()


def test_a_nan_loss_stops_before_the_update_and_keeps_the_last_good_embedding(tmp_path, monkeypatch):
    import ti_experiments.training.loop as loop
    from ti_experiments.errors import TIError

    calls = {"n": 0}
    original = loop.denoising_loss

    def nan_at_third(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(loop, "denoising_loss", nan_at_third)
    with pytest.raises(TIError, match="at step 3.*bf16"):
        _train(tmp_path, "train.save_steps=1")
    good = load_file(tmp_path / "learned_embeds-steps-2.safetensors")["<demo-toy>"]
    assert torch.isfinite(good).all() and not (tmp_path / "learned_embeds-steps-3.safetensors").exists()


def test_a_corrupt_checkpoint_is_refused_and_the_previous_one_named(tmp_path):
    from ti_experiments.errors import TIError

    _train(tmp_path, "train.checkpointing_steps=1", "train.max_steps=2")
    (tmp_path / "checkpoint-2" / "state.json").write_bytes(b"garbage")
    with pytest.raises(TIError, match=r"checkpoint-2 is corrupt.*checkpoint-1"):
        _train(tmp_path, "train.max_steps=3", "train.resume_from_checkpoint=latest")


@pytest.mark.parametrize("lr", ["-1e-3", "0", "abc"])
def test_a_learning_rate_that_is_not_positive_is_refused(tmp_path, lr):
    from ti_experiments.errors import TIError

    with pytest.raises(TIError, match="optimizer.lr"):
        _train(tmp_path, f"optimizer.lr={lr}")


def test_resume_lists_changed_settings(tmp_path, caplog):
    import logging

    _train(tmp_path, "train.max_steps=2")
    with caplog.at_level(logging.WARNING):
        _train(tmp_path, "train.max_steps=3", "optimizer.lr=1e-3", "train.resume_from_checkpoint=latest")
    warning = next(r.getMessage() for r in caplog.records if "changed settings" in r.getMessage())
    assert "optimizer.lr: 0.0005 -> 0.001" in warning and "train.max_steps: 2 -> 3" in warning
    assert "paths." not in warning
