"""How the placeholder embedding is trained: micro-steps, accumulation, saves, checkpoints (the loss
itself is `loss.py`'s).

`run_training(job)` reads top to bottom: a latent cache that encodes each image once, when a step
first draws it (`latent_cache`), place the frozen models (`placement.Placement`), build the optimizer
and the data (`optimization`, `batches`), resume, then the steps; each micro-step's loss and gradients
come from `micro_step` (alone, or with the other jobs of a packed sweep: `packed`); what happens after
each optimizer step (log, save, checkpoint, evaluate, validate, stop) is `EndOfStep`'s, and whether the
concept is learned (so the run stops, keeping its best step) is `stopping`'s. `LoopState` is the little
that changes from step to step.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import EpochSampler, LatentCache, TextualInversionDataset
from ..models.embeddings import PlaceholderEmbedding
from ..errors import Interrupted, TIError
from ..records.run_dir import write_step_embedding
from . import checkpoints, packed
from .initializer import choose_initializer
from .loss import denoising_loss
from .memory import lean_backward, map_frozen_rows, park_in_file, return_free_heap, trim_heap_between_blocks
from .placement import Placement, process_settings
from .settings import HardwareSettings, OptimizerSettings, SchedulerSettings, TrainSettings
from .signals import StopRequests
from .stopping import Stopping

log = logging.getLogger(__name__)


@dataclass
class TrainedWith:
    """What the run trained with, handed back for the benchmark, which times these same pieces after
    training (the latent cache, the optimizer, the dataloader and the frozen weights' dtype)."""

    cache: object  # LatentCache
    optimizer: torch.optim.Optimizer
    dataloader: object
    weight_dtype: torch.dtype


@dataclass
class TrainResult:
    global_step: int  # the step the run stopped at
    final_loss: float | None
    seconds: float
    vectors: list[torch.Tensor]  # the kept step's rows of each text encoder: what learned_embeds*.safetensors hold
    steps_trained: int
    trained_with: TrainedWith
    # where and why the run stopped, which step was kept and why (`Stopping.outcome`)
    outcome: dict = field(default_factory=dict)
    # the rows at the last step, every text encoder's (the processes of one run compare these)
    last: list = field(default_factory=list)
    # the initializer word chosen among concept.initializer_token's candidates, and their scores
    initializer: dict | None = None


@dataclass
class TrainingJob:
    """What the loop trains, with what, and where; `experiment.fit` makes it (the benchmark too)."""

    accelerator: object
    parts: object  # SDComponents
    embeddings: list[PlaceholderEmbedding]  # one per text encoder (SDXL: two, trained together)
    placeholder_token: str
    pixels: torch.Tensor
    dataset: TextualInversionDataset
    optimizer: OptimizerSettings
    lr_scheduler: SchedulerSettings
    train: TrainSettings
    hardware: HardwareSettings
    data: object  # DataSettings
    run_dir: Path
    seed: int
    resume_state: dict  # what a checkpoint must match: tokens, model, settings
    metrics_log_factory: Callable
    validate: Callable | None = None
    evaluate: object = None  # Evaluator
    # concept.initializer_token's words when there are several: the held-out loss chooses the start
    initializers: list[str] | None = None


@dataclass
class LoopState:
    """Where the loop is: the optimizer step, the epoch and the position in it, the loss so far."""

    global_step: int = 0
    start_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    final_loss: float | None = None
    step_loss: torch.Tensor | float = 0.0
    started: float = field(default_factory=time.perf_counter)
    resumed_from: Path | None = None  # the checkpoint this run continues
    stopped: bool = False  # the stopping rule ended the run before train.max_steps


def _any_process(flag: bool, accelerator, device) -> bool:
    """Whether `flag` holds on any process; all processes agree, so they stop at the same step."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([1.0 if flag else 0.0], device=device), "sum").item() > 0)


def _stop_requested(stop: StopRequests, accelerator, device) -> bool:
    """Whether any process was asked to stop (Ctrl-C, SIGTERM)."""
    return _any_process(stop.signum is not None, accelerator, device)


def run_training(job: TrainingJob) -> TrainResult:
    """Train the placeholder rows of every text encoder; process-wide settings are restored at the end."""
    accelerator = job.accelerator
    placement = Placement.of(accelerator, job.hardware)
    with process_settings(job.hardware, placement.device):
        freeze(job, placement.device)
        slot = packed.current()  # a packed sweep's jobs share one cache
        cache = slot.pack.cache_for(lambda: latent_cache(job, placement)) if slot else latent_cache(job, placement)
        unet = placement.load_unet(job.parts)  # loaded (or built) now, if it was deferred
        unet.requires_grad_(False)
        lean_backward(unet)  # large UNets: no activations kept for weight gradients nobody computes
        if placement.device.type == "cpu":  # glibc's heap; a GPU has its own allocator
            trim_heap_between_blocks(unet)
        placement.place_unet(unet, training=True)
        placement.place_text_encoders(job.parts.text_encoders, training=True)
        optimizer, lr_scheduler, lr = optimization(job)
        dataloader = batches(job, placement.device)
        *models, optimizer, dataloader = accelerator.prepare(*job.embeddings, optimizer, dataloader)
        for encoder, wrapped in zip(job.parts.text_encoders, models):
            encoder.set_input_embeddings(wrapped)
        trainable = checkpoints.Trainable(accelerator, models, optimizer, lr_scheduler)
        if job.evaluate is not None:  # the held-out loss draws its fixed latents from the same cache
            job.evaluate.attach(cache, placement.weight_dtype, max_steps=job.train.max_steps,
                                items_per_step=job.train.batch_size * job.train.gradient_accumulation_steps
                                * accelerator.num_processes)
        # several initializer words: each scored by the held-out loss, the best starts (a resume then
        # replaces the rows; the scoring is repeated so the record and heldout_loss_init name the same word)
        initializer = choose_initializer(job, models) if job.initializers else None
        state = resume(job, trainable, len(dataloader))
        stopping = Stopping(job.train, watching=job.evaluate is not None)
        if state.resumed_from is not None:
            stopping.load(state.resumed_from)
        log.info("training %s: %d steps (%d images x %d repeats, batch %d x accumulation %d x %d processes), "
                 "lr %.3g", job.placeholder_token, job.train.max_steps, len(job.dataset) // job.dataset.repeats,
                 job.dataset.repeats, job.train.batch_size, job.train.gradient_accumulation_steps,
                 accelerator.num_processes, lr)
        end_of_step = EndOfStep(job, trainable, state, stopping)  # its metrics log times from here
        # in a pack the signals are the pack's: only the main thread can receive them
        with (contextlib.nullcontext(slot.pack.stop) if slot else StopRequests()) as stop, end_of_step.watching(stop):
            state.started = time.perf_counter()
            train_steps(job, state, models, cache, placement, dataloader, optimizer, lr_scheduler, end_of_step)
    seconds = time.perf_counter() - state.started
    last = [v.detach().float().cpu() for v in learned(accelerator, models)]
    vectors = stopping.kept_vectors(last)
    return TrainResult(global_step=state.global_step, final_loss=state.final_loss, seconds=seconds,
                       vectors=vectors, steps_trained=state.global_step - state.start_step,
                       trained_with=TrainedWith(cache, optimizer, dataloader, placement.weight_dtype),
                       outcome=stopping.outcome(state.global_step, job.train.max_steps, state.stopped),
                       last=last, initializer=initializer)


def freeze(job: TrainingJob, device) -> None:
    """Only the placeholder rows train: the text encoders (which hold them) are frozen first."""
    for encoder in job.parts.text_encoders:
        encoder.requires_grad_(False)
    for e in job.embeddings:
        e.vectors.requires_grad_(True)
        if device.type == "cpu":  # a GPU run copies the matrix to the GPU anyway
            map_frozen_rows(e, job.run_dir)


def latent_cache(job: TrainingJob, placement: Placement) -> LatentCache:
    """The VAE on the device, and a cache that encodes each training image the first time a step draws
    it (`train_steps` encodes the rest right after step 1); once every image (and mirror image) is cached
    the encoder is let go. The decoder stays only for validation and image metrics."""
    parts = job.parts
    dtype = placement.place_vae(parts)
    needs_decoder = job.validate is not None or (job.evaluate is not None and job.evaluate.needs_vae)

    def release() -> None:
        log.info("encoded %d images%s into the latent cache in %.2fs; the VAE encoder is released",
                 job.pixels.shape[0], " and their mirror images" if cache.with_flips else "", cache.encode_seconds)
        placement.release_vae(parts, keep_decoder=needs_decoder)
        gc.collect()
        return_free_heap()

    placement.release_vae(parts, keep_decoder=needs_decoder, keep_encoder=True)
    # on a CPU the encoder waits in a file between encodes, not in memory beside the training UNet
    park = [parts.vae.encoder, parts.vae.quant_conv] if placement.device.type == "cpu" else []
    releases = [r for r in (park_in_file(m, job.run_dir) for m in park if m is not None) if r is not None]

    def tidy() -> None:  # around each encode: freed heap back to the system, the encoder's pages to its file
        for r in releases:
            r()
        return_free_heap()

    cache = LatentCache(parts.vae, job.pixels, with_flips=job.data.flip_p > 0, device=placement.device, dtype=dtype,
                        when_full=release, tidy=tidy)
    return cache


def optimization(job: TrainingJob):
    """The optimizer over the placeholder rows only, its schedule, and the learning rate (scaled by batch x
    accumulation x processes when train.scale_lr, as in the diffusers example)."""
    lr = job.optimizer.lr
    if job.train.scale_lr:
        lr = lr * job.train.gradient_accumulation_steps * job.train.batch_size * job.accelerator.num_processes
    optimizer = job.optimizer.build(params=[e.vectors for e in job.embeddings], lr=lr)
    return optimizer, job.lr_scheduler.build(optimizer=optimizer, num_training_steps=job.train.max_steps), lr


def batches(job: TrainingJob, device) -> DataLoader:
    """Epochs in a seeded order. The loader has its own generator: creating an epoch's iterator must not
    draw from the global RNG, or a resumed run (which creates one mid-epoch) would draw different noise
    from the uninterrupted one."""
    return DataLoader(job.dataset, batch_size=job.train.batch_size, sampler=EpochSampler(len(job.dataset), job.seed),
                      num_workers=int(job.data.num_workers), pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(job.seed))


def resume(job: TrainingJob, trainable: checkpoints.Trainable, micro_per_epoch: int) -> LoopState:
    """The loop's starting point: step 0, or the step of the checkpoint resumed from."""
    step = 0
    path = checkpoints.resolve_resume(job.train.resume_from_checkpoint, job.run_dir)
    if path is not None:
        step = checkpoints.load_checkpoint(trainable, path, job.resume_state)
    steps_per_epoch = math.ceil(micro_per_epoch / job.train.gradient_accumulation_steps)
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    return LoopState(global_step=step, start_step=step, epoch=epoch, step_in_epoch=step_in_epoch,
                     resumed_from=path)


def train_steps(job: TrainingJob, state: LoopState, models, cache, placement: Placement, dataloader, optimizer,
                lr_scheduler, end_of_step: EndOfStep) -> None:
    """Micro-steps accumulate gradients; each optimizer step then goes to `end_of_step`, which says when the
    run is done (the stopping rule, or train.max_steps)."""
    accelerator, ga, max_steps = job.accelerator, job.train.gradient_accumulation_steps, job.train.max_steps
    micro_per_epoch = len(dataloader)
    norms = vocabulary_norms(job.embeddings) if job.train.keep_norm else None
    # a checkpoint of the step the rule stopped at: nothing is left to train
    state.stopped = _any_process(end_of_step.stopping.stop, accelerator, accelerator.device)
    while state.global_step < max_steps and not state.stopped:
        # the epoch is told to Accelerate's loader, which passes it on to the sampler: it sets the sampler's
        # epoch from its own count of iterations on each pass, which a resumed run starts again at 0
        dataloader.set_epoch(state.epoch)
        for micro, batch in itertools.islice(enumerate(dataloader), state.step_in_epoch * ga, None):
            sync = (micro + 1) % ga == 0 or micro + 1 == micro_per_epoch
            loss = micro_step(job, models, cache, placement, batch, sync)
            state.step_loss += loss.detach().float() / ga
            if not sync:
                continue
            state.final_loss = accelerator.reduce(state.step_loss, "mean").item()
            if not math.isfinite(state.final_loss):  # before the update: the embedding stays the last good one
                raise TIError(f"the loss became {state.final_loss} at step {state.global_step + 1}; the embedding "
                              "was not updated with it",
                              "lower optimizer.lr, or use hardware.mixed_precision=bf16 instead of fp16")
            optimizer.step()
            if norms is not None:
                keep_norms(job.embeddings, norms)
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            state.step_loss = 0.0
            end_of_step(lr_scheduler.get_last_lr()[0])
            if state.global_step == state.start_step + 1 < max_steps:
                cache.fill_all()  # step 1 waited only for its own images; the encoder can go now
            if state.global_step >= max_steps or state.stopped:
                break
        state.epoch += 1
        state.step_in_epoch = 0


def vocabulary_norms(embeddings) -> list[float]:
    """Each text encoder's mean row norm over its frozen vocabulary (the placeholder rows left out): where
    train.keep_norm holds the learned vectors, so a learned token weighs in a prompt as much as a word."""
    return [float(e.base.weight[:e.first_id].float().norm(dim=-1).mean()) for e in embeddings]


@torch.no_grad()
def keep_norms(embeddings, norms: list[float]) -> None:
    """Rescale every learned vector to its encoder's vocabulary norm; only the direction is learned."""
    for embedding, norm in zip(embeddings, norms):
        embedding.vectors.mul_(norm / embedding.vectors.norm(dim=-1, keepdim=True))


def micro_step(job: TrainingJob, models, cache, placement: Placement, batch: dict, sync: bool) -> torch.Tensor:
    """A micro-batch's loss, its gradients accumulated in the placeholder rows: here, or in a packed sweep
    in one pass with the other jobs' micro-batches (`packed`)."""
    accelerator, ga = job.accelerator, job.train.gradient_accumulation_steps
    slot = packed.current()
    if slot is not None:
        return slot.loss(packed.Request(batch, models, accelerator, cache, placement, ga, job.train.snr_gamma))
    with contextlib.ExitStack() as ctx:
        if not sync:
            for wrapped in models:
                ctx.enter_context(accelerator.no_sync(wrapped))
        ctx.enter_context(accelerator.autocast())
        loss = denoising_loss(job.parts, job.parts.text_encoder, cache, batch, placement.weight_dtype,
                              placement.device, job.train.snr_gamma)
        accelerator.backward(loss / ga)
    return loss


class EndOfStep:
    """What follows each optimizer step, in order: evaluate and log (one metrics row; the stopping rule
    sees the held-out loss), save the embedding, checkpoint (with the rule's state), stop cleanly when
    asked (saving both first), validate; and, when the rule says so, end the run here."""

    def __init__(self, job: TrainingJob, trainable: checkpoints.Trainable, state: LoopState, stopping: Stopping):
        self.job, self.trainable, self.models, self.state = job, trainable, trainable.models, state
        self.stopping = stopping
        self.accelerator = job.accelerator
        self.metrics = job.metrics_log_factory(start_step=state.global_step)
        # A bar for a person at a terminal; CI logs, other processes and packed jobs get a line every 10%.
        self.show_bar = self.accelerator.is_local_main_process and sys.stderr.isatty() and packed.current() is None
        self.every = max(1, job.train.max_steps // 10)

    @contextlib.contextmanager
    def watching(self, stop: StopRequests):
        """While the steps run: the stop requests to honour, and the progress bar."""
        self.stop = stop
        self.progress = tqdm(total=self.job.train.max_steps, initial=self.state.global_step, desc="steps",
                             mininterval=1, disable=not self.show_bar)
        try:
            yield self
        finally:
            self.progress.close()

    def __call__(self, lr: float) -> dict:
        step, max_steps, evaluate = self.state.global_step, self.job.train.max_steps, self.job.evaluate
        row = self.log(step, lr)
        saved = self.job.train.saves_at(step)
        if saved:
            self.save(step)
        checkpointed = self.job.train.checkpoints_at(step)
        if checkpointed:
            self.checkpoint(step)
        if _stop_requested(self.stop, self.accelerator, self.accelerator.device):
            self.stop_here(step, saved, checkpointed)
        if self.stopping.active and evaluate is not None and evaluate.due(step, max_steps) and step < max_steps:
            # the main process evaluated; every process stops at the same step
            self.state.stopped = _any_process(self.stopping.stop, self.accelerator, self.accelerator.device)
            if self.state.stopped and self.accelerator.is_main_process:
                log.info("step %d: %s; keeping step %d", step, self.stopping.rule.reason(),
                         self.stopping.rule.best_step)
        if self.job.validate is not None and (self.job.validate.settings.due(step, max_steps) or self.state.stopped):
            self.job.validate(step)
        return row

    def log(self, step: int, lr: float) -> dict:
        """One metrics row (with the evaluation's values at its steps), the bar, and the 10% log lines."""
        loss, evaluate, max_steps = self.state.final_loss, self.job.evaluate, self.job.train.max_steps
        values = {"loss": loss, "lr": lr}
        if evaluate is not None and evaluate.due(step, max_steps):  # same row, same step
            scores = evaluate(step)
            self.stopping.observe(step, scores, learned(self.accelerator, self.models))
            values.update(scores)
        row = self.metrics.log(step, values)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}",
                                  steps_per_s=f"{row['steps_per_sec'] or 0:.2f}", refresh=False)
        first = step == self.state.start_step + 1  # when training really began
        if not self.show_bar and self.accelerator.is_main_process and (first or step % self.every == 0
                                                                        or step == max_steps):
            log.info("step %d/%d  loss %.4f  lr %.3g  %.2f steps/s", step, max_steps, loss, row["lr"],
                     row["steps_per_sec"] or 0.0)
        return row

    def save(self, step: int) -> None:
        if self.accelerator.is_main_process:
            write_step_embedding(self.job.run_dir, step, self.job.placeholder_token,
                                 learned(self.accelerator, self.models))

    def checkpoint(self, step: int) -> None:
        checkpoints.save_checkpoint(self.trainable, self.job.run_dir, step, self.job.resume_state,
                                    self.job.train.checkpoints_total_limit, extra=self.stopping.save)

    def stop_here(self, step: int, saved: bool, checkpointed: bool) -> None:
        """A stop request (Ctrl-C, SIGTERM): the embedding and a checkpoint of this step, then a clean exit."""
        if not saved:
            self.save(step)
        if not checkpointed:
            self.checkpoint(step)
        self.progress.close()
        signum = self.stop.signum or signal.SIGTERM
        raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint-{step} and the "
                          f"embedding of that step are saved in {self.job.run_dir}; fix: resume with "
                          f"hydra.run.dir={self.job.run_dir} train.resume_from_checkpoint=latest", signum)


def learned(accelerator, models) -> list[torch.Tensor]:
    """The trained rows of each text encoder, first encoder first."""
    return [accelerator.unwrap_model(m).vectors for m in models]
