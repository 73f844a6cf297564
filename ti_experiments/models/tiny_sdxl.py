"""A tiny SDXL-format model, built offline and bit-identically every time (`model=tiny_sdxl`).

The same idea as `tiny.py`, with SDXL's structure: two CLIP text encoders (the second with a
projection, whose pooled output conditions the UNet), a UNet with `addition_embed_type="text_time"`
whose cross-attention width is the two encoders' widths concatenated, and SDXL's Euler scheduler
config. The encoders have different widths (32 and 64) so a swapped `clip_l`/`clip_g` never fits.
`StableDiffusionXLPipeline.from_pretrained(folder)` loads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .tiny import MODEL_MAX_LENGTH, seeded, ensure_built, write_tokenizer_files

# Bump whenever anything below changes the bytes written (it names the cache folder).
TINY_SDXL_VERSION = "2"

WIDTH_1, WIDTH_2 = 32, 64  # text_encoder (CLIP-L's role) and text_encoder_2 (OpenCLIP bigG's role)
TIME_EMBED_DIM = 8  # addition_time_embed_dim; SDXL's six size numbers each get this many features


def build_tiny_sdxl_model(out_dir: Path) -> None:
    """Build the tiny SDXL model and save it in diffusers layout (safetensors) into `out_dir`."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"refusing to build the tiny SDXL model into non-empty {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)

    # One vocabulary, two tokenizers, as in SDXL: the second pads with "!" instead of the end token.
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer_files(out_dir / name)
    tokenizer = CLIPTokenizer.from_pretrained(out_dir / "tokenizer", model_max_length=MODEL_MAX_LENGTH)
    tokenizer_2 = CLIPTokenizer.from_pretrained(out_dir / "tokenizer_2", model_max_length=MODEL_MAX_LENGTH,
                                                pad_token="!")

    unet = seeded(10, lambda: UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=WIDTH_1 + WIDTH_2, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + WIDTH_2,
    ))
    vae = seeded(11, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4, sample_size=64, scaling_factor=0.13025, force_upcast=True,
    ))

    def text_config(width: int, pad_token_id: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width + 5, num_hidden_layers=5,
            num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH, layer_norm_eps=1e-5,
            hidden_act="gelu", projection_dim=width, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_token_id,
        )

    text_encoder = seeded(12, lambda: CLIPTextModel(text_config(WIDTH_1, tokenizer.pad_token_id)))
    text_encoder_2 = seeded(13, lambda: CLIPTextModelWithProjection(text_config(WIDTH_2, tokenizer_2.pad_token_id)))
    # SDXL base 1.0's scheduler config; training reads it as a DDPMScheduler, as diffusers' SDXL example does.
    scheduler = EulerDiscreteScheduler.from_config({
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon", "interpolation_type": "linear", "use_karras_sigmas": False,
        "timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
        "sample_max_value": 1.0, "skip_prk_steps": True,
    })
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def ensure_tiny_sdxl_model(cache_dir: str | os.PathLike) -> Path:
    """The cached tiny SDXL model's folder, built first if it is not there yet."""
    return ensure_built(Path(cache_dir).expanduser() / f"tiny-sdxl-{TINY_SDXL_VERSION}", build_tiny_sdxl_model)
