"""Held-out denoising loss: the training loss at a fixed set of (image, noise, timestep) triples.

The per-step training loss draws new noise and timesteps every step, so its noise hides the trend.
Here the triples are drawn once from their own seed (never from the global RNG, so evaluating does
not change training) and the same triples are scored at every evaluation: with the learned token in
the prompt, and with the initializer token instead. The numbers compare between runs on the same model
and images. The loss itself is the training loop's own (`training.loss.loss_at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import TEMPLATES, LatentCache
from ..training.loss import loss_at


@dataclass
class HeldoutSet:
    latents: torch.Tensor  # [K, C, h, w], scaled like the training latents
    noise: torch.Tensor
    timesteps: torch.Tensor
    # "learned" (the placeholder tokens), "init" (the initializer word) and, with a description, "words":
    # the same K templates, as the model family's prompt fields (token ids of every tokenizer)
    prompts: dict[str, dict[str, torch.Tensor]]
    # each triple's image conditioning (SDXL: time ids), empty for families that have none
    image_fields: dict[str, torch.Tensor]

    @property
    def words_ids(self):
        """The description's prompts, or None when the evaluation has no description."""
        return self.prompts.get("words")


def build_heldout_set(cache: LatentCache, parts, placeholder_string: str, initializer_token: str,
                      learnable_property: str, num_samples: int, seed: int, description: str | None = None,
                      geometry: torch.Tensor | None = None) -> HeldoutSet:
    """K triples from `seed` alone: images in turn (not mirrored), one timestep per K-th of the schedule
    (stratified: less variance than K free draws), a training template per triple. `geometry`: the
    images' size and crop (`ConceptImages.time_ids`), for families conditioned on it."""
    num_train_timesteps = parts.noise_scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(int(seed))
    index = torch.arange(num_samples) % cache.num_images
    flipped = torch.zeros(num_samples, dtype=torch.bool)
    eps = torch.randn((num_samples, *cache.latent_shape), generator=gen)
    noise = torch.randn((num_samples, *cache.latent_shape), generator=gen)
    offsets = torch.rand(num_samples, generator=gen)
    timesteps = ((torch.arange(num_samples) + offsets) * num_train_timesteps / num_samples).long()
    timesteps = timesteps.clamp(max=num_train_timesteps - 1)
    templates = TEMPLATES[learnable_property]
    picks = torch.randint(len(templates), (num_samples,), generator=gen).tolist()
    latents = cache.sample(index, flipped, eps=eps).cpu()
    words = {"learned": placeholder_string, "init": initializer_token, "words": description}
    prompts = {which: parts.family.prompt_fields(parts.tokenizers, [templates[i].format(text) for i in picks])
               for which, text in words.items() if text is not None}
    return HeldoutSet(latents=latents, noise=noise, timesteps=timesteps, prompts=prompts,
                      image_fields=parts.family.image_fields(geometry, index, flipped) if geometry is not None else {})


@torch.no_grad()
def heldout_loss(parts, text_encoder, held: HeldoutSet, which: str, weight_dtype, device,
                 batch_size: int = 8) -> float:
    """Mean loss over the set; `which` is "learned", "init" or "words". Callers set eval modes and autocast."""
    fields = {**held.prompts[which], **held.image_fields}
    total, count = 0.0, held.latents.shape[0]
    for start in range(0, count, batch_size):
        part = slice(start, start + batch_size)
        latents = held.latents[part].to(device, weight_dtype)
        noise = held.noise[part].to(device, weight_dtype)
        batch = {k: v[part] for k, v in fields.items()}
        loss = loss_at(parts, text_encoder, latents, noise, held.timesteps[part].to(device), batch, weight_dtype,
                       device)
        total += loss.item() * latents.shape[0]
    return total / count
