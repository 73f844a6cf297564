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
    learned_ids: torch.Tensor  # [K, 77]: template with the placeholder tokens
    init_ids: torch.Tensor  # the same template with the initializer token
    words_ids: torch.Tensor | None = None  # the same template with the concept described in words


def _tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def build_heldout_set(cache: LatentCache, tokenizer, num_train_timesteps: int, placeholder_string: str,
                      initializer_token: str, learnable_property: str, num_samples: int, seed: int,
                      description: str | None = None) -> HeldoutSet:
    """K triples from `seed` alone: images in turn (not mirrored), one timestep per K-th of the schedule
    (stratified: less variance than K free draws), a training template per triple."""
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
    return HeldoutSet(latents=latents, noise=noise, timesteps=timesteps,
                      learned_ids=_tokenize(tokenizer, [templates[i].format(placeholder_string) for i in picks]),
                      init_ids=_tokenize(tokenizer, [templates[i].format(initializer_token) for i in picks]),
                      words_ids=None if description is None else
                      _tokenize(tokenizer, [templates[i].format(description) for i in picks]))


@torch.no_grad()
def heldout_loss(parts, text_encoder, held: HeldoutSet, which: str, weight_dtype, device,
                 batch_size: int = 8) -> float:
    """Mean loss over the set; `which` is "learned", "init" or "words". Callers set eval modes and autocast."""
    ids = {"learned": held.learned_ids, "init": held.init_ids, "words": held.words_ids}[which]
    total, count = 0.0, held.latents.shape[0]
    for start in range(0, count, batch_size):
        part = slice(start, start + batch_size)
        latents = held.latents[part].to(device, weight_dtype)
        noise = held.noise[part].to(device, weight_dtype)
        loss = loss_at(parts, text_encoder, latents, noise, held.timesteps[part].to(device), {"input_ids": ids[part]},
                       weight_dtype, device)
        total += loss.item() * latents.shape[0]
    return total / count
