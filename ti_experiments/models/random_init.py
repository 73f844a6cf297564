"""Stable Diffusion v1.5's and SDXL base 1.0's exact architectures with random weights, built offline.

Speed and memory depend on shapes, not on the weights: this measures the real model's cost without
downloading 4 GB (7 GB for SDXL). The tokenizer is the tiny BPE padded to CLIP's 49408 entries, so the
embedding matrices have the real shapes too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import TIError

ARCHITECTURES = {
    "sd15": {
        "unet": dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
            act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", norm_num_groups=32, scaling_factor=0.18215,
        ),
        "text_encoder": dict(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        "scheduler": dict(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        ),
    },
}
# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0's configs): 2,567,463,684 UNet, 123,060,480 +
# 694,659,840 text-encoder and 83,653,863 VAE parameters.
ARCHITECTURES["sdxl"] = {
    "unet": dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
    ),
    "vae": {**ARCHITECTURES["sd15"]["vae"], "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    "text_encoder": ARCHITECTURES["sd15"]["text_encoder"],
    "text_encoder_2": dict(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    ),
    "scheduler": {**ARCHITECTURES["sd15"]["scheduler"], "timestep_spacing": "leading"},
}


def build_module(name: str, part: str):
    """One part of architecture `name` with fresh random weights (no seed: callers seed, or use meta)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = ARCHITECTURES[name][part]
    if part == "unet":
        return UNet2DConditionModel(**config)
    if part == "vae":
        return AutoencoderKL(**config)
    model = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
    return model(CLIPTextConfig(**config))


def random_components(name: str, cache_dir: str | Path, seed: int = 0) -> dict:
    """tokenizer, text_encoder, vae, unet and noise_scheduler of `name`'s shapes, randomly initialised
    (and SDXL's tokenizer_2 and text_encoder_2)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    from .tiny import MODEL_MAX_LENGTH, write_tokenizer_files

    if name not in ARCHITECTURES:
        raise TIError(f"model.random_init is available for {', '.join(ARCHITECTURES)} only, not {name!r}",
                      "use model=sd15 (or sdxl) model.random_init=true, or model.random_init=false")
    arch = ARCHITECTURES[name]
    vocab = arch["text_encoder"]["vocab_size"]
    tok_dir = Path(cache_dir).expanduser() / "models" / f"tokenizer-{vocab}"
    if not (tok_dir / "vocab.json").exists():
        write_tokenizer_files(tok_dir, vocab_size=vocab)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=MODEL_MAX_LENGTH)
    if len(tokenizer) != vocab:
        raise AssertionError(f"padded tokenizer has {len(tokenizer)} entries, not {vocab}")
    def seeded(offset, build):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + offset)
            return build().eval()

    parts = dict(tokenizer=tokenizer,
                 text_encoder=seeded(2, lambda: build_module(name, "text_encoder")),
                 vae=seeded(1, lambda: build_module(name, "vae")),
                 unet=lambda **_: seeded(0, lambda: build_module(name, "unet")),  # built when first used
                 noise_scheduler=DDPMScheduler.from_config(arch["scheduler"]))
    if "text_encoder_2" in arch:  # SDXL: the same vocabulary, padded with "!" as SDXL's second tokenizer is
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=MODEL_MAX_LENGTH, pad_token="!")
        parts["text_encoder_2"] = seeded(3, lambda: build_module(name, "text_encoder_2"))
    return parts


def ensure_random_model(name: str, cache_dir: str | Path, seed: int = 0) -> Path:
    """`name`'s architecture with random weights as a diffusers folder in the cache, written once: a run
    then loads it like any downloaded model (the same loading code, weights mapped from safetensors
    files), so its speed and memory are what a user's run has."""
    from .tiny import ensure_built

    if name not in ARCHITECTURES:
        random_components(name, cache_dir)  # the one error for an unknown architecture
    target = Path(cache_dir).expanduser() / "models" / f"random-{name}-seed{seed}"
    return ensure_built(target, lambda folder: _write_random_model(name, cache_dir, seed, folder))


def _write_random_model(name: str, cache_dir: str | Path, seed: int, folder: Path) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = random_components(name, cache_dir, seed)
    parts["unet"] = parts["unet"]()
    parts["scheduler"] = parts.pop("noise_scheduler")
    if "text_encoder_2" in parts:
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
