"""Short tiny-SDXL runs: both encoders learn, nothing else changes, the files, the size conditioning, resume."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ti_experiments.training.loss as loss
from conftest import TINY_SDXL_RUN, compose
from ti_experiments.config.checks import check_config
from ti_experiments.records.run_dir import read_embedding
from ti_experiments.experiment import run

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each


def _train(tmp_path, *overrides):
    return run(compose(*TINY_SDXL_RUN, *overrides, output_dir=tmp_path))


def test_sdxl_trains_both_encoders_rows_and_nothing_else(tmp_path, tiny_sdxl_path, monkeypatch):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ti_experiments.config.checks import check_config
    from ti_experiments.experiment import fit, make_accelerator, prepare, reset_accelerate
    from ti_experiments.records.run_record import MetricsLog

    cfg = compose(*TINY_SDXL_RUN, "concept.num_vectors=2", "optimizer.lr=0.05", "train.max_steps=3",
                  output_dir=tmp_path)
    assert cfg.hardware.mixed_precision == "bf16"  # SDXL's default, on CPU too
    p = prepare(check_config(cfg), tmp_path)
    starts = [e.vectors.detach().clone() for e in p.embeddings]
    accelerator = make_accelerator(p.settings.hardware, p.settings.logger, tmp_path)
    try:
        result = fit(p, accelerator, partial(MetricsLog, tmp_path, accelerator, accelerator.device))
    finally:
        reset_accelerate()
    fresh = [CLIPTextModel.from_pretrained(tiny_sdxl_path, subfolder="text_encoder"),
             CLIPTextModelWithProjection.from_pretrained(tiny_sdxl_path, subfolder="text_encoder_2")]
    for encoder, before, start, learned in zip(p.parts.text_encoders, fresh, starts,
                                               result.vectors):
        module = encoder.get_input_embeddings()
        assert module.vectors.dtype == torch.float32 and learned.shape == start.shape
        assert not torch.equal(learned, start)  # this encoder's rows learned something
        vocab = before.config.vocab_size
        assert torch.equal(module.weight[:vocab], before.get_input_embeddings().weight)  # frozen rows
        trained = {k: v for k, v in encoder.state_dict().items() if "token_embedding" not in k}
        for name, value in before.state_dict().items():
            if "token_embedding" not in name:
                assert torch.equal(trained[name], value), name
    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_path, subfolder="unet").to(torch.bfloat16)
    trained_unet = p.parts.unet.state_dict()
    assert all(torch.equal(trained_unet[k], v) for k, v in unet.state_dict().items())


def test_sdxl_run_writes_both_layouts_and_the_size_conditioning_reaches_the_unet(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(images / "a.png")
    Image.new("RGB", (64, 64), (30, 200, 30)).save(images / "b.png")
    seen = []
    original = loss.text_conditioning

    def spy(*args, **kwargs):
        hidden, added = original(*args, **kwargs)
        seen.extend(added["time_ids"].tolist())
        return hidden, added

    monkeypatch.setattr(loss, "text_conditioning", spy)
    run_dir = _train(tmp_path / "run", "concept.num_vectors=2", f"concept.train_data_dir={images}",
                     "data.center_crop=true", "train.batch_size=2")
    # a: 96x64, centre square from x=16, i.e. 16 px at 64 (as is and mirrored); b: square, nothing cropped
    assert {tuple(r) for r in seen} <= {(64, 96, 0, 16, 64, 64), (64, 64, 0, 0, 64, 64)}
    assert {tuple(r) for r in seen} == {(64, 96, 0, 16, 64, 64), (64, 64, 0, 0, 64, 64)}

    first = load_file(run_dir / "learned_embeds.safetensors")
    second = load_file(run_dir / "learned_embeds_2.safetensors")
    assert list(first) == list(second) == ["<demo-toy>"]
    assert first["<demo-toy>"].shape == (2, 32) and second["<demo-toy>"].shape == (2, 64)
    a1111 = load_file(run_dir / "demo-toy.safetensors")
    assert set(a1111) == {"clip_l", "clip_g"}
    assert torch.equal(a1111["clip_l"], first["<demo-toy>"]) and torch.equal(a1111["clip_g"], second["<demo-toy>"])
    both = read_embedding(run_dir)
    assert both.format == "diffusers-sdxl" and both.token == "<demo-toy>" and both.widths == [32, 64]
    single = read_embedding(run_dir / "demo-toy.safetensors")
    assert single.format == "sdxl" and all(torch.equal(a, b) for a, b in zip(single.vectors, both.vectors))
    for step in (2, 4):  # intermediate saves hold both encoders' rows
        assert load_file(run_dir / f"learned_embeds-steps-{step}.safetensors")["<demo-toy>"].shape == (2, 32)
        assert load_file(run_dir / f"learned_embeds_2-steps-{step}.safetensors")["<demo-toy>"].shape == (2, 64)
    checkpoint = run_dir / "checkpoint-4"
    assert load_file(checkpoint / "state.safetensors")["vectors.0"].shape == (2, 32)
    assert load_file(checkpoint / "state.safetensors")["vectors.1"].shape == (2, 64)


def test_sdxl_resume_continues_to_the_same_embeddings(tmp_path):
    # the last step is kept (the stopping rule off): the first leg's own final evaluation at step 1 could
    # otherwise be kept, which the straight run never scores
    common = ["train.gradient_accumulation_steps=2", "train.checkpointing_steps=1", "train.save_steps=null",
              "train.stop_early=false"]
    straight = _train(tmp_path / "a", *common, "train.max_steps=2")
    _train(tmp_path / "b", *common, "train.max_steps=1")  # stops at checkpoint-1, mid-epoch
    resumed = _train(tmp_path / "b", *common, "train.max_steps=2", "train.resume_from_checkpoint=latest")
    for name in ("learned_embeds.safetensors", "learned_embeds_2.safetensors"):
        assert torch.equal(load_file(straight / name)["<demo-toy>"], load_file(resumed / name)["<demo-toy>"]), name


def test_an_initializer_that_is_not_one_token_is_refused_for_sdxl(tmp_path):
    from ti_experiments.errors import TIError

    with pytest.raises(TIError, match="initializer_token"):
        _train(tmp_path, "concept.initializer_token=zqxvbn")


def test_init_from_an_sdxl_file_starts_both_encoders_rows_from_it(tmp_path, tiny_sdxl_path):
    from ti_experiments.models.embeddings import save_sdxl
    from ti_experiments.errors import TIError
    from ti_experiments.experiment import prepare

    gen = torch.Generator().manual_seed(3)
    clip_l, clip_g = torch.randn(2, 32, generator=gen), torch.randn(2, 64, generator=gen)
    source = save_sdxl(tmp_path / "warm.safetensors", clip_l, clip_g)
    p = prepare(check_config(compose(*TINY_SDXL_RUN, "concept.num_vectors=2", f"concept.init_from={source}",
                                     output_dir=tmp_path / "run")), tmp_path / "run")
    assert torch.equal(p.embeddings[0].vectors.detach(), clip_l)
    assert torch.equal(p.embeddings[1].vectors.detach(), clip_g)
    one_encoder = tmp_path / "sd.safetensors"
    from ti_experiments.models.embeddings import save_learned_embeds

    save_learned_embeds(one_encoder, "<y>", clip_l)
    with pytest.raises(TIError, match="does not fit this model"):
        prepare(check_config(compose(*TINY_SDXL_RUN, "concept.num_vectors=2", f"concept.init_from={one_encoder}",
                                     output_dir=tmp_path / "run2")), tmp_path / "run2")


def test_sdxl_is_evaluated_through_its_family_held_out_loss_and_image_metrics(tmp_path):
    """The held-out loss conditions SDXL's UNet as training does (both encoders, the images' time ids), and
    image metrics generate with the SDXL pipeline over the modules being trained."""
    import json
    import math

    run_dir = _train(tmp_path, "optimizer.lr=0.05", "train.max_steps=2", "evaluation.steps=1",
                     "evaluation.image_metrics=true", "evaluation.image_steps=2", "validation.num_inference_steps=2",
                     "evaluation.num_prompts=1")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in rows if r.get("heldout_loss") is not None]
    assert [r["step"] for r in held] == [1, 2]
    assert all(math.isfinite(r["heldout_loss"]) and math.isfinite(r["heldout_loss_init"]) for r in held)
    assert held[0]["heldout_loss"] != held[1]["heldout_loss"]  # the learned rows move the loss
    assert all(k in held[-1] and math.isfinite(held[-1][k]) for k in ("clip_i", "clip_t", "dino"))
    summary = json.loads((run_dir / "summary.json").read_text())  # the kept step's figures
    assert summary["heldout_loss"] == next(r["heldout_loss"] for r in held if r["step"] == summary["kept_step"])
