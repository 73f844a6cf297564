"""How the placeholder embedding is trained: the denoising loss, accumulation, saves, checkpoints."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import EpochSampler, LatentCache, TextualInversionDataset
from ..embeddings import PlaceholderEmbedding, save_learned_embeds
from ..errors import TIError
from . import checkpoints
from .conditioning import text_conditioning
from .memory import lean_backward, map_frozen_rows, return_free_heap
from .signals import Interrupted, StopRequests

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    global_step: int
    final_loss: float | None
    seconds: float
    vectors: torch.Tensor
    steps_trained: int
    # what the benchmark times after training: cache, optimizer, dataloader, weight_dtype
    state: dict
    # SDXL: the second text encoder's rows (None for SD 1.x/2.x)
    vectors_2: torch.Tensor | None = None


def _stop_requested(stop: StopRequests, accelerator, device) -> bool:
    """Whether any process was asked to stop; all processes agree, so they stop at the same step."""
    if accelerator.num_processes == 1:
        return stop.signum is not None
    flag = torch.tensor([1.0 if stop.signum is not None else 0.0], device=device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def weight_dtype_for(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def setup_attention(unet, attention: str, device: torch.device) -> None:
    """sdpa is diffusers' default on torch 2; xformers only where it is installed and CUDA runs."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            log.info("xformers is not installed: using torch SDPA attention")
            attention = "sdpa"
        else:
            if device.type != "cuda":
                log.info("xformers needs CUDA: using torch SDPA attention")
                attention = "sdpa"
            else:
                unet.enable_xformers_memory_efficient_attention()
                return
    if attention == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    elif attention == "default":
        unet.set_attn_processor(AttnProcessor())
    else:
        raise TIError(f"hardware.attention={attention!r} is unknown", "use sdpa, xformers or default")


def denoising_loss(parts, text_encoder, cache: LatentCache, batch: dict, weight_dtype, device) -> torch.Tensor:
    """The training loss of a batch: a fresh latent draw, noise and timestep each, then `loss_at`."""
    latents = cache.sample(batch["image_index"], batch["flipped"]).to(weight_dtype)
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, parts.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              device=device)
    return loss_at(parts, text_encoder, latents, noise, timesteps, batch, weight_dtype, device)


def loss_at(parts, text_encoder, latents, noise, timesteps, batch: dict, weight_dtype, device) -> torch.Tensor:
    """MSE between the UNet's prediction and the noise (or the velocity for v-prediction models), at given
    latents, noise and timesteps: training draws them per step, the held-out loss fixes them once.
    `batch` holds the prompts' `input_ids` (SDXL: also `input_ids_2` and `time_ids`)."""
    scheduler = parts.noise_scheduler
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden, added_cond_kwargs = text_conditioning(parts, text_encoder, batch, weight_dtype, device)
    pred = parts.unet(noisy, timesteps, hidden, added_cond_kwargs=added_cond_kwargs).sample
    target = prediction_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def prediction_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    """What the UNet must predict: the noise (SD 1.x, epsilon) or the velocity (SD 2.x 768, v_prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise TIError(f"prediction type {kind!r} is not supported",
                  "use a model whose scheduler predicts epsilon or v_prediction")


def save_step_embeds(run_dir: Path, step: int, placeholder_token: str, vectors: list[torch.Tensor]) -> None:
    """learned_embeds-steps-N.safetensors, and for SDXL learned_embeds_2-steps-N.safetensors (the second
    encoder's rows), the names diffusers' SDXL example gives them."""
    for i, rows in enumerate(vectors):
        suffix = "" if i == 0 else f"_{i + 1}"
        save_learned_embeds(run_dir / f"learned_embeds{suffix}-steps-{step}.safetensors", placeholder_token, rows)


def run_training(*, accelerator, parts, embedding: PlaceholderEmbedding,
                 placeholder_token: str, pixels: torch.Tensor, dataset: TextualInversionDataset,
                 make_optimizer: Callable, base_lr: float, make_scheduler: Callable, train_cfg, hw_cfg, data_cfg,
                 run_dir: Path, seed: int, resume_state: dict, metrics_log_factory: Callable,
                 validate: Callable | None = None, embedding_2: PlaceholderEmbedding | None = None,
                 evaluate=None) -> TrainResult:
    """Train the placeholder rows; `embedding_2` is SDXL's second text encoder's (trained together)."""
    device = accelerator.device
    weight_dtype = weight_dtype_for(accelerator.mixed_precision)
    ga = int(train_cfg.gradient_accumulation_steps)
    batch_size = int(train_cfg.batch_size)
    max_steps = int(train_cfg.max_steps)

    text_encoder, vae = parts.text_encoder, parts.vae
    embeddings = [embedding] + ([embedding_2] if embedding_2 is not None else [])
    text_encoders = parts.text_encoders  # SDXL: both
    for encoder in text_encoders:
        encoder.requires_grad_(False)
    vae.requires_grad_(False)
    for e in embeddings:
        e.vectors.requires_grad_(True)
        if device.type == "cpu":  # a GPU run copies the matrix to the GPU anyway
            map_frozen_rows(e, run_dir)

    # First the VAE: encode every training image once, then let it go before the UNet arrives.
    t0 = time.perf_counter()
    vae.eval()
    # SDXL's VAE overflows in fp16 (its config says force_upcast): it encodes in fp32, as SDXL pipelines do
    vae_dtype = (torch.float32 if parts.is_sdxl and weight_dtype == torch.float16
                 and vae.config.get("force_upcast", False) else weight_dtype)
    vae.to(device) if vae_dtype == torch.float32 else vae.to(device, dtype=vae_dtype)
    cache = LatentCache.build(vae, pixels, with_flips=data_cfg.flip_p > 0, device=device, dtype=vae_dtype)
    log.info("encoded %d images into the latent cache in %.2fs", pixels.shape[0], time.perf_counter() - t0)
    # Training needs no encoder, and the decoder only for validation images.
    vae.encoder = None
    vae.quant_conv = None
    if validate is None and not (evaluate is not None and evaluate.needs_vae):
        parts.vae = None
        del vae
    elif hw_cfg.offload_idle:
        vae.to("cpu")  # validation brings it back for generation
    gc.collect()
    return_free_heap()

    unet = parts.unet  # loaded (or built) now, if it was deferred
    unet.requires_grad_(False)
    lean_backward(unet)  # no activations kept for weight gradients nobody computes
    if hw_cfg.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    setup_attention(unet, hw_cfg.attention, device)
    if hw_cfg.get("channels_last"):
        unet.to(memory_format=torch.channels_last)
    if hw_cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for encoder in text_encoders:
            encoder.gradient_checkpointing_enable()
        unet.train()  # checkpointing is only active in train mode; the UNet has no dropout
    else:
        unet.eval()
    # the frozen UNet runs in the mixed-precision dtype; the trained text encoders stay fp32 (autocast)
    unet.to(device) if weight_dtype == torch.float32 else unet.to(device, dtype=weight_dtype)
    for encoder in text_encoders:
        encoder.train()
        encoder.to(device)

    lr = float(base_lr)  # checked by checks.check_run_settings
    if train_cfg.scale_lr:
        lr = lr * ga * batch_size * accelerator.num_processes
    optimizer = make_optimizer(params=[e.vectors for e in embeddings], lr=lr)
    lr_scheduler = make_scheduler(optimizer=optimizer, num_training_steps=max_steps)

    sampler = EpochSampler(len(dataset), seed)
    # Its own generator: creating an epoch's iterator must not draw from the global RNG, or a
    # resumed run (which creates one mid-epoch) would draw different noise from the uninterrupted one.
    dataloader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                            num_workers=int(data_cfg.num_workers), pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed))
    *models, optimizer, dataloader = accelerator.prepare(*embeddings, optimizer, dataloader)
    for encoder, wrapped in zip(text_encoders, models):
        encoder.set_input_embeddings(wrapped)
    accelerator.register_for_checkpointing(lr_scheduler)
    checkpoints.register_hooks(accelerator)

    global_step = 0
    resume_path = checkpoints.resolve_resume(train_cfg.resume_from_checkpoint, run_dir)
    if resume_path is not None:
        global_step = checkpoints.load_checkpoint(accelerator, resume_path, resume_state)

    micro_per_epoch = len(dataloader)
    steps_per_epoch = math.ceil(micro_per_epoch / ga)
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    log.info("training %s: %d steps (%d images x %d repeats, batch %d x accumulation %d x %d processes), "
             "lr %.3g", placeholder_token, max_steps, len(dataset) // dataset.repeats, dataset.repeats,
             batch_size, ga, accelerator.num_processes, lr)

    metrics = metrics_log_factory(start_step=global_step)
    if evaluate is not None:  # the held-out loss draws its fixed latents from the same cache
        evaluate.attach(cache, weight_dtype, start_step=global_step, max_steps=max_steps)
    # A bar for a person at a terminal; CI logs and other processes get a line every 10% instead.
    show_bar = accelerator.is_local_main_process and sys.stderr.isatty()
    progress = tqdm(total=max_steps, initial=global_step, desc="steps", mininterval=1, disable=not show_bar)
    every = max(1, max_steps // 10)
    started = time.perf_counter()
    start_step = global_step
    final_loss = None
    step_loss = 0.0
    with StopRequests() as stop:
        while global_step < max_steps:
            sampler.set_epoch(epoch)
            batches = itertools.islice(enumerate(dataloader), step_in_epoch * ga, None)
            for micro, batch in batches:
                sync = (micro + 1) % ga == 0 or micro + 1 == micro_per_epoch
                with contextlib.ExitStack() as ctx:
                    if not sync:
                        for wrapped in models:
                            ctx.enter_context(accelerator.no_sync(wrapped))
                    ctx.enter_context(accelerator.autocast())
                    loss = denoising_loss(parts, text_encoder, cache, batch, weight_dtype, device)
                    accelerator.backward(loss / ga)
                step_loss += loss.detach().float() / ga
                if not sync:
                    continue
                final_loss = accelerator.reduce(step_loss, "mean").item()
                if not math.isfinite(final_loss):  # before the update: the embedding stays the last good one
                    raise TIError(f"the loss became {final_loss} at step {global_step + 1}; the embedding was "
                                  "not updated with it",
                                  "lower optimizer.lr, or use hardware.mixed_precision=bf16 instead of fp16")
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                step_loss = 0.0
                values = {"loss": final_loss, "lr": lr_scheduler.get_last_lr()[0]}
                if evaluate is not None and evaluate.due(global_step, max_steps):  # same row, same step
                    values.update(evaluate(global_step, accelerator.unwrap_model(models[0]).vectors))
                row = metrics.log(global_step, values)
                progress.update(1)
                progress.set_postfix(loss=f"{final_loss:.4f}", lr=f"{row['lr']:.2e}",
                                     steps_per_s=f"{row['steps_per_sec'] or 0:.2f}", refresh=False)
                if not show_bar and accelerator.is_main_process and (global_step % every == 0
                                                                    or global_step == max_steps):
                    log.info("step %d/%d  loss %.4f  lr %.3g  %.2f steps/s", global_step, max_steps, final_loss,
                             row["lr"], row["steps_per_sec"] or 0.0)
                saved = bool(train_cfg.save_steps) and global_step % int(train_cfg.save_steps) == 0
                if saved and accelerator.is_main_process:
                    save_step_embeds(run_dir, global_step, placeholder_token, learned(accelerator, models))
                checkpointed = bool(train_cfg.checkpointing_steps) and global_step % int(train_cfg.checkpointing_steps) == 0
                if checkpointed:
                    checkpoints.save_checkpoint(accelerator, run_dir, global_step, resume_state,
                                                train_cfg.checkpoints_total_limit)
                if _stop_requested(stop, accelerator, device):
                    if accelerator.is_main_process and not saved:
                        save_step_embeds(run_dir, global_step, placeholder_token, learned(accelerator, models))
                    if not checkpointed:
                        checkpoints.save_checkpoint(accelerator, run_dir, global_step, resume_state,
                                                    train_cfg.checkpoints_total_limit)
                    progress.close()
                    raise Interrupted(f"stopped by {signal.Signals(stop.signum or signal.SIGTERM).name} at step "
                                      f"{global_step}; checkpoint-{global_step} and the embedding of that step are "
                                      f"saved in {run_dir}; fix: resume with hydra.run.dir={run_dir} "
                                      "train.resume_from_checkpoint=latest", stop.signum or signal.SIGTERM)
                if validate is not None and validate.settings.due(global_step, max_steps):
                    validate(global_step)
                if global_step >= max_steps:
                    break
            epoch += 1
            step_in_epoch = 0
    progress.close()
    seconds = time.perf_counter() - started
    vectors = [v.detach().float().cpu() for v in learned(accelerator, models)]
    return TrainResult(global_step=global_step, final_loss=final_loss, seconds=seconds, vectors=vectors[0],
                       steps_trained=global_step - start_step,
                       state={"cache": cache, "optimizer": optimizer, "dataloader": dataloader,
                              "weight_dtype": weight_dtype},
                       vectors_2=vectors[1] if len(vectors) > 1 else None)


def learned(accelerator, models) -> list[torch.Tensor]:
    """The trained rows of each text encoder, first encoder first."""
    return [accelerator.unwrap_model(m).vectors for m in models]
