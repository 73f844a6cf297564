"""The toy world's networks, untrained: Stable Diffusion 1.x's classes at a size a CPU can pretrain.

Images are 32 px; the VAE downsamples by 4 into 8 x 8 x 4 latents, where a 5.9 M-parameter UNet with
cross-attention at every level runs a training step at batch 64 in about a second on one core. The
text encoder is CLIP's, 128 wide and 4 layers deep, over a tokenizer that keeps every caption word and
textual inversion's template words whole. The judge is a separate CLIP (its own weights and seed),
whose image tower also carries one classifier per attribute.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ti_experiments.models.tiny import MODEL_MAX_LENGTH, seeded, write_tokenizer_files
from ti_experiments.toyworld import world

LATENT_CHANNELS = 4
TEXT_WIDTH = 128


def write_tokenizer(out_dir: Path):
    """The tiny model's tokenizer, which keeps every word of the world's captions whole."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir, model_max_length=MODEL_MAX_LENGTH)


def text_encoder(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                            num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return seeded(seed, lambda: CLIPTextModel(config))


def vae(seed: int):
    from diffusers import AutoencoderKL

    return seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=world.SIZE_PX,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3))


def unet(seed: int):
    from diffusers import UNet2DConditionModel

    return seeded(seed, lambda: UNet2DConditionModel(
        sample_size=world.SIZE_PX // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        layers_per_block=1, block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=32))


def scheduler_config() -> dict:
    """SD 1.x's betas rescaled to zero terminal SNR, with v-prediction: on 8 x 8 latents SD's own schedule
    leaves so much of the image at the last step that sampling from pure noise gives washed-out colours."""
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def judge(tokenizer, seed: int):
    """A CLIP whose image tower sees 32 px images in 4 px patches; the attribute heads sit on its pooled
    image feature (`JudgeHeads`)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=384, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=world.SIZE_PX, patch_size=4, hidden_size=96, intermediate_size=384,
                           num_hidden_layers=4, num_attention_heads=4),
        projection_dim=64)
    return seeded(seed, lambda: CLIPModel(config))


class JudgeHeads(torch.nn.Module):
    """One linear classifier per attribute, on the judge's pooled image feature: trained with the judge as
    extra supervision that makes its image tower notice every attribute (not shipped; the attribute
    classifier below is what scores images)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(width, len(values))
                                          for name, values in world.ATTRIBUTES.items()})

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(pooled) for name, head in self.heads.items()}
