"""Stable Diffusion 1.x/2.x: one CLIP text encoder, conditioned on its last hidden state."""

from __future__ import annotations

import torch

from .family import ModelFamily, present, tokenize


class StableDiffusion(ModelFamily):
    name = "sd"
    label = "SD 1.x/2.x"
    pipeline_class = "StableDiffusionPipeline"
    component_folders = (("tokenizer", "text_encoder"),)

    def recognises(self, components: dict) -> bool:
        return present(components, "text_encoder")

    def load_text_parts(self, source: str, common: dict, weights: dict) -> tuple[list, list]:
        from transformers import CLIPTextModel, CLIPTokenizer

        return ([CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)],
                [CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights)])

    def prompt_fields(self, tokenizers: list, texts: str | list[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": tokenize(tokenizers[0], texts)}

    def conditioning(self, text_encoders: list, batch: dict, weight_dtype, device):
        return text_encoders[0](batch["input_ids"].to(device))[0].to(weight_dtype), None

    def pipeline(self, parts, text_encoders: list, scheduler):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=parts.vae, text_encoder=text_encoders[0], tokenizer=parts.tokenizers[0], unet=parts.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def a1111_tensors(self, vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """AUTOMATIC1111 / ComfyUI / kohya: one `emb_params` key; the file name is the token."""
        return {"emb_params": vectors[0]}
