"""The denoising loss: what a training step draws for each item, and how far the UNet's prediction is
from its target. Training, packed training and the held-out loss all compute it here."""

from __future__ import annotations

import torch

from ..data import LatentCache
from ..errors import TIError


def denoising_loss(parts, text_encoder, cache: LatentCache, batch: dict, weight_dtype, device,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """The training loss of a batch: a fresh latent draw, noise and timestep each, each item's error
    (`item_losses`), weighted by `snr_weights` when `snr_gamma` is set."""
    latents, noise, timesteps = training_inputs(parts, cache, batch, weight_dtype, device)
    losses = item_losses(parts, text_encoder, latents, noise, timesteps, batch, weight_dtype, device)
    return weighted_mean(parts.noise_scheduler, losses, timesteps, snr_gamma)


def weighted_mean(scheduler, losses: torch.Tensor, timesteps: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
    """The batch's loss: the items' mean, each weighted by Min-SNR-gamma when `snr_gamma` is set."""
    if snr_gamma is None:
        return losses.mean()
    return (losses * snr_weights(scheduler, timesteps, snr_gamma)).mean()


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy"): min(SNR(t), gamma) / SNR(t) for a model that predicts the noise, min(SNR(t), gamma) /
    (SNR(t) + 1) for one that predicts the velocity. Low-noise timesteps, whose easy targets would
    otherwise dominate the gradient, count less; gamma 5 is the paper's and invoke-training's value."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = snr.clamp(max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def training_inputs(parts, cache: LatentCache, batch: dict, weight_dtype, device) -> tuple[torch.Tensor, ...]:
    """A batch's latents (one draw from each item's cached latent distribution), noise and timesteps."""
    eps, noise, timesteps = item_draws(batch["seed"], cache.latent_shape,
                                       parts.noise_scheduler.config.num_train_timesteps, device)
    latents = cache.sample(batch["image_index"], batch["flipped"], eps=eps).to(weight_dtype)
    return latents, noise.to(weight_dtype), timesteps


def item_draws(seeds: torch.Tensor, shape: tuple, num_timesteps: int, device) -> tuple[torch.Tensor, ...]:
    """Each item's standard-normal latent draw, noise and timestep, from the item's own seed (the sampler
    derives it from the run's seed, the epoch and the position), on the CPU: a resumed run, a packed sweep
    and another device all draw exactly what this run draws."""
    eps, noise, steps = [], [], []
    for seed in seeds.tolist():
        gen = torch.Generator().manual_seed(int(seed))
        eps.append(torch.randn(shape, generator=gen))
        noise.append(torch.randn(shape, generator=gen))
        steps.append(torch.randint(num_timesteps, (), generator=gen))
    return torch.stack(eps).to(device), torch.stack(noise).to(device), torch.stack(steps).to(device)


def loss_at(parts, text_encoder, latents, noise, timesteps, batch: dict, weight_dtype, device) -> torch.Tensor:
    """MSE between the UNet's prediction and the noise (or the velocity for v-prediction models), at given
    latents, noise and timesteps: training draws them per step, the held-out loss fixes them once.
    `batch` holds the fields the model's family makes for a prompt and an image (`prompt_fields`, `image_fields`)."""
    return item_losses(parts, text_encoder, latents, noise, timesteps, batch, weight_dtype, device).mean()


def item_losses(parts, text_encoder, latents, noise, timesteps, batch: dict, weight_dtype, device) -> torch.Tensor:
    """Each item's mean squared error (a batch's loss is their mean; a packed step splits them by job)."""
    hidden, added_cond_kwargs = text_conditioning(parts, text_encoder, batch, weight_dtype, device)
    return unet_losses(parts, latents, noise, timesteps, hidden, added_cond_kwargs)


def unet_losses(parts, latents, noise, timesteps, hidden, added_cond_kwargs) -> torch.Tensor:
    """Each item's mean squared error of the UNet's prediction, given the text conditioning (the benchmark
    times the text encoders and the UNet apart through here)."""
    scheduler = parts.noise_scheduler
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = parts.unet(noisy, timesteps, hidden, added_cond_kwargs=added_cond_kwargs).sample
    target = prediction_target(scheduler, latents, noise, timesteps)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def text_conditioning(parts, text_encoder, batch: dict, weight_dtype, device):
    """(encoder_hidden_states, added_cond_kwargs) for the UNet, as the model's family conditions it;
    `text_encoder` is the (possibly Accelerate-wrapped) first encoder, the others are the parts' own."""
    return parts.family.conditioning([text_encoder, *parts.text_encoders[1:]], batch, weight_dtype, device)


def prediction_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    """What the UNet must predict: the noise (SD 1.x, epsilon) or the velocity (SD 2.x 768, v_prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise TIError(f"prediction type {kind!r} is not supported",
                  "use a model whose scheduler predicts epsilon or v_prediction")
