"""The tiny model must be reproducible, cached, loadable by the stock classes, and tokenize like CLIP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ti_experiments.models import tiny
from ti_experiments.models.tiny import (
    TINY_MODEL_VERSION,
    build_tiny_model,
    ensure_tiny_model,
    tokenizer_words,
)

TEMPLATE_WORDS = (
    "a photo of the rendering cropped clean dirty dark my cool close up bright good rendition "
    "one painting in style picture weird large small nice big"
).split()
USER_WORDS = (
    "toy cat dog train object style painting art sculpture figure doll car beach forest city "
    "mountain red blue"
).split()


def _digests(folder: Path, pattern: str = "*") -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob(pattern))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(model_dir / "tokenizer")


def test_build_is_bit_identical_and_leaves_global_rng_alone(model_dir, tmp_path):
    torch.manual_seed(12345)  # a different global state than the first build saw
    state = torch.get_rng_state()
    build_tiny_model(tmp_path / "again")
    assert torch.equal(torch.get_rng_state(), state)

    weights = _digests(model_dir, "*.safetensors")
    assert set(weights) == {
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    }
    assert _digests(tmp_path / "again", "*.safetensors") == weights
    # Configs and tokenizer files too: the whole folder is a function of TINY_MODEL_VERSION.
    assert _digests(tmp_path / "again") == _digests(model_dir)


def test_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_ensure_builds_once_then_reuses_the_cache(tmp_path, monkeypatch):
    calls = []
    real_build = tiny.build_tiny_model
    monkeypatch.setattr(tiny, "build_tiny_model", lambda out: (calls.append(out), real_build(out)))

    first = ensure_tiny_model(tmp_path / "cache")
    assert first == tmp_path / "cache" / f"tiny-sd-{TINY_MODEL_VERSION}"
    assert (first / "model_index.json").is_file()
    mtime = (first / "model_index.json").stat().st_mtime_ns

    second = ensure_tiny_model(str(tmp_path / "cache"))
    assert second == first
    assert len(calls) == 1
    assert (first / "model_index.json").stat().st_mtime_ns == mtime
    # The temporary build folder was renamed away, not left behind.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]


def test_ensure_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = ensure_tiny_model("~/models")
    assert path == tmp_path / "models" / f"tiny-sd-{TINY_MODEL_VERSION}"
    assert (path / "model_index.json").is_file()


def test_ensure_loser_of_a_race_uses_the_winners_copy(tmp_path, monkeypatch):
    target = tmp_path / f"tiny-sd-{TINY_MODEL_VERSION}"
    real_build = tiny.build_tiny_model
    winner = {}

    def racing_build(out):
        real_build(target)  # another process finishes first, while we are still building
        winner["mtime"] = (target / "model_index.json").stat().st_mtime_ns
        real_build(out)

    monkeypatch.setattr(tiny, "build_tiny_model", racing_build)
    path = ensure_tiny_model(tmp_path)

    assert path == target
    assert (target / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # Our copy was dropped (the winner's folder, which others may be reading, stays in place),
    # and no temporary folder is left behind.
    assert (target / "model_index.json").stat().st_mtime_ns == winner["mtime"]
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_components_load_and_the_pipeline_makes_an_image(model_dir):
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")

    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size == 32
    assert unet.config.sample_size == 16 and unet.config.in_channels == vae.config.latent_channels == 4
    assert tuple(vae.config.block_out_channels) == (32, 64)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.steps_offset == 1
    assert scheduler.config.set_alpha_to_one is False
    assert text_encoder.config.vocab_size == len(tokenizer)
    assert text_encoder.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert text_encoder.config.bos_token_id == tokenizer.bos_token_id
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id
    assert text_encoder.config.pad_token_id == tokenizer.pad_token_id

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    out = pipe(
        "a photo of a toy",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 32, 32, 3)
    assert np.isfinite(out.images).all()


def test_every_listed_word_is_one_token(tokenizer):
    words = tokenizer_words()
    assert set(TEMPLATE_WORDS) <= set(words)
    assert set(USER_WORDS) <= set(words)
    assert len(words) >= 300
    split = {w: ids for w in words if len(ids := tokenizer(w, add_special_tokens=False).input_ids) != 1}
    assert split == {}
    # Same word, same id, whether alone or in a template.
    ids = tokenizer("a close-up photo of a toy", add_special_tokens=False).input_ids
    assert ids[-1] == tokenizer("toy", add_special_tokens=False).input_ids[0]
    assert len(ids) == 8  # a, close, -, up, photo, of, a, toy


def test_unknown_words_fall_back_to_bytes(tokenizer):
    ids = tokenizer("zqxv", add_special_tokens=False).input_ids
    assert len(ids) > 1
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "zqxv"
    ids = tokenizer("café", add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "café"


def test_placeholder_is_not_yet_a_token(tokenizer):
    assert "<cat-toy>" not in tokenizer.get_vocab()
    assert len(tokenizer("<cat-toy>", add_special_tokens=False).input_ids) > 1


def test_tokenizer_matches_sd_conventions(tokenizer, model_dir):
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.bos_token == "<|startoftext|>"
    encoded = tokenizer("A Photo of a TOY", padding="max_length", max_length=77, truncation=True)
    ids = encoded.input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    assert ids[:7] == tokenizer("a photo of a toy").input_ids  # lower-cased, like CLIP
    assert ids[6:] == [tokenizer.eos_token_id] * 71


def test_vocab_files_have_clip_layout(model_dir, tokenizer):
    vocab = json.loads((model_dir / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    merges = (model_dir / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    merges = merges[1:]
    tokens = sorted(vocab, key=vocab.get)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert len(vocab) == 512 + len(merges) + 2 == len(tokenizer)
    assert tokens[:256] == [t[: -len("</w>")] for t in tokens[256:512]]
    assert all(t.endswith("</w>") for t in tokens[256:512])
    assert tokens[512:-2] == [m.replace(" ", "") for m in merges]
    assert tokens[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert tokens[0] == "!" and "a" in tokens[:256]
