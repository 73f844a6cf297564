"""The tiny SDXL model: reproducible, SDXL-shaped, cached, loadable by the stock SDXL pipeline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ti_experiments.models import load_tiny_components
from ti_experiments.models.tiny_sdxl import TINY_SDXL_VERSION, build_tiny_sdxl_model, ensure_tiny_sdxl_model


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_is_bit_identical_and_leaves_global_rng_alone(tiny_sdxl_path, tmp_path):
    torch.manual_seed(4321)
    state = torch.get_rng_state()
    build_tiny_sdxl_model(tmp_path / "again")
    assert torch.equal(torch.get_rng_state(), state)
    assert _digests(tmp_path / "again") == _digests(tiny_sdxl_path)
    assert {"text_encoder_2/model.safetensors", "tokenizer_2/vocab.json", "model_index.json"} <= set(
        _digests(tiny_sdxl_path))


def test_ensure_builds_into_the_versioned_cache_folder(tmp_path, monkeypatch):
    import ti_experiments.models.tiny_sdxl as tiny_sdxl

    calls = []
    real = tiny_sdxl.build_tiny_sdxl_model
    monkeypatch.setattr(tiny_sdxl, "build_tiny_sdxl_model", lambda out: (calls.append(out), real(out)))
    first = ensure_tiny_sdxl_model(tmp_path)
    assert first == tmp_path / f"tiny-sdxl-{TINY_SDXL_VERSION}" and (first / "model_index.json").is_file()
    assert ensure_tiny_sdxl_model(tmp_path) == first and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_it_has_sdxl_structure_and_loads_as_sdxl(tiny_sdxl_path):
    parts = load_tiny_components(str(tiny_sdxl_path))
    assert parts.family.name == "sdxl" and len(parts.text_encoders) == 2 and len(parts.tokenizers) == 2
    (te1, te2), unet = parts.text_encoders, parts.unet
    assert type(te1).__name__ == "CLIPTextModel" and type(te2).__name__ == "CLIPTextModelWithProjection"
    assert (te1.config.hidden_size, te2.config.hidden_size) == (32, 64)  # a swapped clip_l/clip_g never fits
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.cross_attention_dim == te1.config.hidden_size + te2.config.hidden_size
    assert unet.config.projection_class_embeddings_input_dim == 6 * unet.config.addition_time_embed_dim + \
        te2.config.projection_dim
    assert parts.tokenizers[0].get_vocab() == parts.tokenizers[1].get_vocab()
    assert parts.tokenizers[0].pad_token == "<|endoftext|>" and parts.tokenizers[1].pad_token == "!"  # as in SDXL
    for te in (te1, te2):
        assert te.config.vocab_size == len(parts.tokenizer)
        assert te.config.eos_token_id == parts.tokenizer.eos_token_id  # pooling finds the end token
    assert parts.vae.config.force_upcast and parts.vae.config.scaling_factor == 0.13025
    assert parts.noise_scheduler.__class__.__name__ == "DDPMScheduler"  # training reads it as DDPM


def test_the_sdxl_pipeline_makes_an_image(tiny_sdxl_path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.__class__.__name__ == "EulerDiscreteScheduler"
    out = pipe("a photo of a toy", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
