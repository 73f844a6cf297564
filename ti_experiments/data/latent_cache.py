"""Encode each training image (and its mirror image) with the VAE once, not at every step.

The VAE encoder is deterministic; the only randomness of the example's per-step
`vae.encode(x).latent_dist.sample()` is the draw from the latent Gaussian. Keeping each image's
mean and std and drawing from them per step gives the same distribution without the VAE's cost
(23% of the reference step at 256 px).

An image is encoded the first time a step draws it, not all of them before step 1: the first step
then waits for its own images only (encoding six images and their mirrors took 22 s of a 51 s start
at 256 px); the training loop encodes the rest right after step 1. Once every entry is cached,
`when_full` lets the encoder go.
"""

from __future__ import annotations

import time
from typing import Callable

import torch


class LatentCache:
    def __init__(self, vae, pixels: torch.Tensor, with_flips: bool, device, dtype,
                 when_full: Callable[[], None] | None = None, tidy: Callable[[], None] | None = None):
        self.vae = vae
        self.pixels = pixels
        self.with_flips = with_flips
        self.device = torch.device(device)
        self.dtype = dtype
        self.when_full = when_full
        # called before and after each round of encoding: memory the encoder does not need goes first, and
        # the encoder's own after it (a training step's freed heap, the encoder's pages)
        self.tidy = tidy
        self.scaling_factor = float(vae.config.scaling_factor)
        self.num_images = pixels.shape[0]
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = (int(vae.config.latent_channels), pixels.shape[-2] // factor, pixels.shape[-1] // factor)
        # [2, N, C, h, w]: index 0 as is, 1 mirrored (without flips, a flip that never happens maps to 0)
        self.mean = torch.zeros((2, self.num_images, *self.latent_shape), device=self.device)
        self.std = torch.zeros_like(self.mean)
        self.cached = torch.zeros((2, self.num_images), dtype=torch.bool)
        self.encoded_at: list[tuple[float, float]] = []  # (perf_counter at the end, seconds) of each encode

    @classmethod
    def build(cls, vae, pixels: torch.Tensor, with_flips: bool, device, dtype) -> LatentCache:
        """Every entry encoded now (evaluation scores all images at once)."""
        cache = cls(vae, pixels, with_flips, device, dtype)
        cache.fill_all()
        return cache

    def fill_all(self) -> None:
        every = torch.arange(self.num_images)
        self.fill(every, torch.zeros(self.num_images, dtype=torch.bool))
        if self.with_flips:
            self.fill(every, torch.ones(self.num_images, dtype=torch.bool))

    @property
    def encode_seconds(self) -> float:
        return sum(seconds for _, seconds in self.encoded_at)

    @property
    def full(self) -> bool:
        return bool(self.cached[: 2 if self.with_flips else 1].all())

    def _variant(self, flipped: torch.Tensor) -> torch.Tensor:
        return flipped.long() if self.with_flips else torch.zeros_like(flipped, dtype=torch.long)

    @torch.inference_mode()
    def fill(self, image_index: torch.Tensor, flipped: torch.Tensor) -> None:
        """Encode the entries of a batch that are not cached yet, one image at a time (the encoder's
        activations at 512 px are ~0.6 GiB per image)."""
        variants = self._variant(flipped.cpu())
        missing = sorted({(int(v), int(i)) for v, i in zip(variants, image_index.cpu()) if not self.cached[v, i]})
        if missing and self.tidy is not None:
            self.tidy()
        for v, i in missing:
            started = time.perf_counter()
            image = self.pixels[i: i + 1]
            image = image.flip(-1) if v else image
            with torch.autocast(self.device.type, enabled=False):  # a step's autocast must not recast the VAE
                dist = self.vae.encode(image.to(device=self.device, dtype=self.dtype)).latent_dist
            self.mean[v, i] = dist.mean[0].float()
            self.std[v, i] = dist.std[0].float()
            self.cached[v, i] = True
            self.encoded_at.append((time.perf_counter(), time.perf_counter() - started))
        if missing and self.tidy is not None:
            self.tidy()
        if self.vae is not None and self.full:
            self.vae = self.tidy = None
            if self.when_full is not None:
                self.when_full()

    def sample(self, image_index: torch.Tensor, flipped: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents for a batch: one fresh draw from each item's latent Gaussian (or the given
        standard-normal `eps`, which makes the draw a fixed one)."""
        if self.vae is not None:
            self.fill(image_index, flipped)
        variant = self._variant(flipped).to(self.mean.device)
        image_index = image_index.to(self.mean.device)
        mean = self.mean[variant, image_index]
        std = self.std[variant, image_index]
        eps = torch.randn_like(mean) if eps is None else eps.to(mean.device, mean.dtype)
        return (mean + std * eps) * self.scaling_factor
