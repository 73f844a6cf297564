"""Stable Diffusion XL: two CLIP text encoders, both of which learn the placeholder.

Conditioned as SDXL's pipelines encode a prompt: the penultimate hidden states of both encoders
concatenated on the feature axis, the second encoder's projected pooled output as `text_embeds`, and
each image's six size and crop numbers (original height and width, crop top and left, target height
and width) as `time_ids`.
"""

from __future__ import annotations

import torch

from .family import ModelFamily, present, tokenize


class StableDiffusionXL(ModelFamily):
    name = "sdxl"
    label = "SDXL"
    pipeline_class = "StableDiffusionXLPipeline"
    component_folders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    def recognises(self, components: dict) -> bool:
        return present(components, "text_encoder_2")

    def load_text_parts(self, source: str, common: dict, weights: dict) -> tuple[list, list]:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        tokenizers = [CLIPTokenizer.from_pretrained(source, subfolder=t, **common) for t, _ in self.component_folders]
        return tokenizers, [CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights),
                            CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **weights)]

    def prompt_fields(self, tokenizers: list, texts: str | list[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": tokenize(tokenizers[0], texts), "input_ids_2": tokenize(tokenizers[1], texts)}

    def image_fields(self, geometry: torch.Tensor | None, index, flipped) -> dict[str, torch.Tensor]:
        """`time_ids`: the image's size and crop (as is or mirrored, like the image itself)."""
        if geometry is None:
            raise ValueError("SDXL items need the images' size and crop (ConceptImages.time_ids)")
        if isinstance(index, torch.Tensor):
            return {"time_ids": geometry[flipped.long(), index]}
        return {"time_ids": geometry[int(flipped), index]}

    def conditioning(self, text_encoders: list, batch: dict, weight_dtype, device):
        first = text_encoders[0](batch["input_ids"].to(device), output_hidden_states=True)
        second = text_encoders[1](batch["input_ids_2"].to(device), output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1).to(weight_dtype)
        # time_ids stay fp32: the UNet turns them into sinusoidal features in fp32 anyway.
        added = {"text_embeds": second.text_embeds.to(weight_dtype), "time_ids": batch["time_ids"].to(device)}
        return hidden, added

    def pipeline(self, parts, text_encoders: list, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=parts.vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
            tokenizer=parts.tokenizers[0], tokenizer_2=parts.tokenizers[1], unet=parts.unet, scheduler=scheduler,
            add_watermarker=False)

    def vae_dtype(self, vae, weight_dtype: torch.dtype) -> torch.dtype:
        """SDXL's VAE overflows in fp16 (its config says force_upcast): it encodes in fp32, as its pipelines do."""
        upcast = weight_dtype == torch.float16 and vae.config.get("force_upcast", False)
        return torch.float32 if upcast else weight_dtype

    def a1111_tensors(self, vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The layout A1111 and ComfyUI read: `clip_l` (first encoder) and `clip_g` (second) in one file."""
        return {"clip_l": vectors[0], "clip_g": vectors[1]}
