"""How the toy world's networks are pretrained: three stages (VAE, generator, judge), each a resumable loop.

Every batch is a function of (seed, stage, step) alone, and a stage's checkpoint holds its weights, its
optimizer and its EMA, so a stage stopped at any checkpoint and resumed continues exactly, in this
session or the next one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ti_experiments.records.files import atomic_dir, write_text_atomic
from ti_experiments.training.checkpoints import optimizer_files, optimizer_state
from ti_experiments.toyworld import world

log = logging.getLogger(__name__)


# -- data ----------------------------------------------------------------------------------------------

def batch_rng(seed: int, stage: str, step: int) -> random.Random:
    return random.Random(f"{seed}-{stage}-{step}")


def render_batch(scenes: list[world.Scene], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] as [N, 3, 32, 32] and the objects' coverage masks as [N, 1, 32, 32]."""
    pixels, masks = [], []
    for scene in scenes:
        image, mask = world.render(scene, rng)
        pixels.append(np.asarray(image, np.float32))
        masks.append(mask)
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2) / 127.5 - 1
    return x, torch.from_numpy(np.stack(masks)).unsqueeze(1)


def pretraining_batch(rng: random.Random, n: int) -> list[world.Scene]:
    scenes = []
    while len(scenes) < n:
        scene = world.draw_scene(rng)
        if world.is_pretraining_scene(scene):
            scenes.append(scene)
    return scenes


# -- the loop ------------------------------------------------------------------------------------------

@dataclass
class StageSettings:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float | None = None
    checkpoint_every: int = 100
    log_every: int = 25
    # steps where the schedule starts over (warm-up, then cosine to the next restart or the end): a
    # stage extended after it finished is extended by a restart, so a rebuild retraces the same steps
    restarts: tuple[int, ...] = ()


class Stage:
    """A resumable training loop over named modules: `step_fn(step, rng)` returns the loss to minimise
    (and a dict of figures to log); everything it needs is in `modules`."""

    def __init__(self, name: str, work_dir: Path, modules: dict[str, torch.nn.Module], settings: StageSettings,
                 seed: int):
        self.name, self.dir, self.modules, self.s, self.seed = name, Path(work_dir) / name, modules, settings, seed
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.ema = ({k: {n: p.detach().clone() for n, p in m.state_dict().items()} for k, m in modules.items()}
                    if settings.ema_decay else None)
        self.step, self.seconds = 0, 0.0
        self._load()

    @property
    def done(self) -> bool:
        return self.step >= self.s.steps

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to a tenth of the peak at the end of the cycle (the stage's
        last step, or its next restart)."""
        bounds = [0, *sorted(r for r in self.s.restarts if 0 < r < self.s.steps), self.s.steps]
        start = max(b for b in bounds[:-1] if b <= step)
        end = bounds[bounds.index(start) + 1]
        into = step - start
        if into < self.s.warmup_steps:
            return self.s.lr * (into + 1) / self.s.warmup_steps
        progress = (into - self.s.warmup_steps) / max(1, end - start - self.s.warmup_steps)
        return self.s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def run(self, step_fn: Callable, max_seconds: float | None = None, until: int | None = None) -> None:
        """Train to the stage's last step, or for `max_seconds`, or up to step `until`, whichever is first."""
        started = time.monotonic()
        for m in self.modules.values():
            m.train()
        while not self.done and (until is None or self.step < until):
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                log.info("%s: time budget reached at step %d; resume to continue", self.name, self.step)
                break
            t0 = time.monotonic()
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            loss, figures = step_fn(self.step, batch_rng(self.seed, self.name, self.step))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
            self.optimizer.step()
            self._update_ema()
            self.step += 1
            self.seconds += time.monotonic() - t0
            if self.step % self.s.log_every == 0 or self.done:
                row = {"step": self.step, "loss": loss.item(), "lr": self.lr_at(self.step - 1),
                       "seconds": round(self.seconds, 1), **figures}
                with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                log.info("%s step %d/%d loss %.4f (%.2f s/step, %.0f s so far)", self.name, self.step, self.s.steps,
                         loss.item(), self.seconds / self.step, self.seconds)
            if self.step % self.s.checkpoint_every == 0 or self.done:
                self.save()

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.s.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for key, module in self.modules.items():
                for name, value in module.state_dict().items():
                    if value.dtype.is_floating_point:
                        self.ema[key][name].mul_(decay).add_(value, alpha=1 - decay)
                    else:
                        self.ema[key][name].copy_(value)

    def final_weights(self, key: str) -> dict[str, torch.Tensor]:
        """The EMA's weights where the stage keeps one, else the trained ones."""
        return self.ema[key] if self.ema is not None else self.modules[key].state_dict()

    # checkpoint: weights, EMA and optimizer state in safetensors/torch files we wrote ourselves
    def save(self) -> None:
        tensors = {f"{k}.{n}": v.detach().contiguous() for k, m in self.modules.items()
                   for n, v in m.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}.{n}": v.contiguous() for k, d in self.ema.items() for n, v in d.items()})
        with atomic_dir(self.dir / "checkpoint") as tmp:
            optimizer_tensors, optimizer_numbers = optimizer_files(self.optimizer)  # data, never a pickle
            save_file({**tensors, **{k: v.contiguous() for k, v in optimizer_tensors.items()}},
                      str(tmp / "weights.safetensors"))
            write_text_atomic(tmp / "state.json", json.dumps({"step": self.step, "seconds": self.seconds,
                                                              "optimizer": optimizer_numbers}))

    def _load(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.dir / "checkpoint"
        if not (ckpt / "state.json").exists():
            return
        tensors = load_file(str(ckpt / "weights.safetensors"))
        for key, module in self.modules.items():
            module.load_state_dict({n[len(key) + 1:]: v for n, v in tensors.items() if n.startswith(key + ".")})
            if self.ema is not None:
                prefix = f"ema.{key}."
                self.ema[key] = {n[len(prefix):]: v for n, v in tensors.items() if n.startswith(prefix)}
        state = json.loads((ckpt / "state.json").read_text())
        if "optimizer" in state:
            self.optimizer.load_state_dict(optimizer_state(self.optimizer, tensors, state["optimizer"]))
        else:  # a checkpoint of an earlier version (a pickled optimizer.pt): never unpickled
            log.warning("%s: %s has no optimizer state this version reads; AdamW's moments start anew",
                        self.name, ckpt)
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        # rows logged after the checkpoint belong to steps that will be run again
        metrics = self.dir / "metrics.jsonl"
        if metrics.exists():
            rows = [r for r in metrics.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= self.step]
            write_text_atomic(metrics, "".join(r + "\n" for r in rows))
        log.info("%s: resumed at step %d (%.0f s of training so far)", self.name, self.step, self.seconds)


# -- the three stages ----------------------------------------------------------------------------------

def vae_step(vae, batch_size: int, kl_weight: float, object_weight: float):
    """L1 + L2 reconstruction, with the object's pixels weighted up (a flat background dominates)."""
    def step(step: int, rng: random.Random):
        x, mask = render_batch(pretraining_batch(rng, batch_size), rng)
        posterior = vae.encode(x).latent_dist
        gen = torch.Generator().manual_seed(rng.getrandbits(63))
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        y = vae.decode(z).sample
        weight = 1 + object_weight * mask
        rec = ((y - x).abs() * weight).mean() + ((y - x) ** 2 * weight).mean()
        kl = posterior.kl().mean() / x[0].numel()
        return rec + kl_weight * kl, {"rec": rec.item(), "kl": kl.item()}
    return step


@torch.no_grad()
def latent_scale(vae, seed: int, count: int = 1024) -> float:
    """1 / std of the latents: what SD calls scaling_factor, measured for this VAE (SD's 0.18215 is not ours)."""
    rng = batch_rng(seed, "latent-scale", 0)
    x, _ = render_batch(pretraining_batch(rng, count), rng)
    return float(1.0 / vae.encode(x).latent_dist.mean.std())


@dataclass
class Nicknames:
    """From step `start` on, `share` of each generator batch is scenes called by a nickname
    (`world.nicknames`); before it, batches are exactly what they were without nicknames."""
    start: int | None
    share: float  # the recipe's (ti_experiments_dev/conf/pretrain.yaml): no second default here

    def count(self, step: int, batch_size: int) -> int:
        return 0 if self.start is None or step < self.start else round(batch_size * self.share)


def nickname_batch(rng: random.Random, n: int, table: dict[str, dict]) -> tuple[list[world.Scene], list[str]]:
    scenes, captions = [], []
    for _ in range(n):
        word = rng.choice(tuple(table))
        scene = world.nickname_scene(word, table[word], rng)
        scenes.append(scene)
        captions.append(world.nickname_caption(scene, word, table[word], rng))
    return scenes, captions


def generator_step(vae, text_encoder, unet, tokenizer, scheduler, batch_size: int,
                   nicknames: Nicknames | None = None, seed: int = 0):
    """SD's own objective on rendered scenes: the VAE is frozen; text encoder and UNet learn together."""
    scale = vae.config.scaling_factor
    nicknames = nicknames or Nicknames(start=None, share=0.0)
    table = world.nicknames(seed) if nicknames.start is not None else {}

    def step(step: int, rng: random.Random):
        named = nicknames.count(step, batch_size)
        scenes = pretraining_batch(rng, batch_size - named)
        nick_scenes, nick_captions = nickname_batch(rng, named, table) if named else ([], [])
        x, _ = render_batch(scenes + nick_scenes, rng)
        captions = [world.training_caption(s, rng) for s in scenes] + nick_captions
        gen = torch.Generator().manual_seed(rng.getrandbits(63))
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            latents = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)) * scale
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        target = scheduler.get_velocity(latents, noise, t)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        states = text_encoder(ids)[0]
        pred = unet(noisy, t, states).sample
        return F.mse_loss(pred, target), {}
    return step


def judge_step(judge, heads, tokenizer, batch_size: int):
    """CLIP's contrastive loss between images and their captions, plus one cross-entropy per attribute.
    Images are softened and noised at random, so the judge also reads generated images fairly."""
    names = list(world.ATTRIBUTES)

    def step(step: int, rng: random.Random):
        scenes = pretraining_batch(rng, batch_size)
        x, _ = render_batch(scenes, rng)
        gen = torch.Generator().manual_seed(rng.getrandbits(63))
        x = degrade(x, gen)
        captions = [world.caption(s) if rng.random() < 0.5 else (world.training_caption(s, rng) or world.caption(s))
                    for s in scenes]
        tokens = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        vision = judge.vision_model(pixel_values=x)
        image = F.normalize(judge.visual_projection(vision.pooler_output), dim=-1)
        text = F.normalize(judge.text_projection(judge.text_model(**tokens).pooler_output), dim=-1)
        logits = judge.logit_scale.exp().clamp(max=100) * image @ text.T
        # scenes described by the same caption are not negatives of each other
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        contrastive = (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                       + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean()) / 2
        labels = [s.labels() for s in scenes]
        out = heads(vision.pooler_output)
        attribute = sum(F.cross_entropy(out[n], torch.tensor([lab[n] for lab in labels])) for n in names) / len(names)
        return contrastive + attribute, {"contrastive": contrastive.item(), "attribute": attribute.item()}
    return step


def classifier_step(classifier, batch_size: int):
    """One cross-entropy per attribute on rendered scenes, softened and noised like generated images."""
    def step(step: int, rng: random.Random):
        scenes = pretraining_batch(rng, batch_size)
        x, _ = render_batch(scenes, rng)
        x = degrade(x, torch.Generator().manual_seed(rng.getrandbits(63)))
        out = classifier(x)
        labels = [s.labels() for s in scenes]
        losses = {n: F.cross_entropy(out[n], torch.tensor([lab[n] for lab in labels])) for n in world.ATTRIBUTES}
        return sum(losses.values()) / len(losses), {n: round(v.item(), 4) for n, v in losses.items()}
    return step


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Half the images blurred a little, all with a little noise and a small colour shift."""
    n = x.shape[0]
    kernel = torch.tensor([0.25, 0.5, 0.25])
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"),
                       (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3), groups=3)
    pick = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
    x = pick * blurred + (1 - pick) * x
    x = x + 0.04 * torch.randn(x.shape, generator=gen) + 0.04 * torch.randn(n, 3, 1, 1, generator=gen)
    return x.clamp(-1, 1)
