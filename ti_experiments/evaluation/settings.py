"""The `evaluation` config group, and which way each metric is better (for the best embedding and Optuna)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from omegaconf import OmegaConf

from ..errors import TIError
from ..config.settings import Settings, bound, seed_bound

# The public names, as in metrics.jsonl and summary.json. Losses: lower is better; similarities: higher.
METRICS = ("heldout_loss", "heldout_loss_init", "heldout_loss_words", "clip_i", "clip_t", "dino")
IMAGE_METRICS = ("clip_i", "clip_t", "dino")


def direction(key: str) -> str:
    """'minimize' or 'maximize' for a summary.json key: similarities (clip_*, dino, and best_ of them)
    are maximised, everything else (losses, seconds) minimised."""
    name = key[len("best_"):] if key.startswith("best_") else key
    return "maximize" if name in IMAGE_METRICS else "minimize"


def worst(key: str) -> float:
    """The value a failed run counts as for a searching sweeper: the worst one in the metric's direction."""
    return -math.inf if direction(key) == "maximize" else math.inf


if not OmegaConf.has_resolver("ti.direction"):  # sweeps/optuna.yaml: direction: ${ti.direction:${objective}}
    OmegaConf.register_new_resolver("ti.direction", direction)


@dataclass
class EvaluationSettings(Settings):
    """The `evaluation` config node (conf/evaluation/*.yaml)."""

    GROUP = "evaluation"

    enabled: bool = True
    # held-out loss every N optimizer steps and at the end (0 or null: only at the end, as train.save_steps)
    steps: int | None = bound(500, minimum=0, example="500")
    heldout_samples: int = bound(16, minimum=1, example="16")
    heldout_seed: int = seed_bound()
    # the concept in plain words ("large orange circle with ears"): heldout_loss_words scores that prompt too
    description: str | None = bound(None, example="'large orange circle with ears'")
    heldout_batch_size: int = bound(4, minimum=1, example="4")
    # true, false, or "auto": on where there is a GPU (or MPS), off on a CPU
    image_metrics: Literal[True, False, "auto"] = "auto"
    # image metrics every N optimizer steps and at the end (0 or null: only at the end, as train.save_steps)
    image_steps: int | None = bound(500, minimum=0, example="500")
    # "dreambench" (the DreamBench object prompts, or our style prompts for a style), or a list with {}
    prompts: str | list[str] = bound("dreambench", example="dreambench")
    num_prompts: int | None = bound(None, minimum=1, example="5")
    num_images: int = bound(4, minimum=1, example="4")
    batch_size: int = bound(8, minimum=1, example="8")
    # the word that stands for the concept in CLIP-T's text (null: the concept's initializer token)
    text_subject: str | None = bound(None, example="toy")
    clip_model: str = bound("openai/clip-vit-base-patch32", example="openai/clip-vit-base-patch32")
    dino_model: str = bound("facebook/dino-vits16", example="facebook/dino-vits16")
    # learned_embeds-best.safetensors by this metric (null: clip_i with image metrics, else heldout_loss)
    best_metric: Literal[METRICS] | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.prompts, str):
            self.prompts = list(self.prompts)

    def images_on(self, device) -> bool:
        """Image metrics need generation: on where there is an accelerator, unless said otherwise."""
        if not self.enabled:
            return False
        if self.image_metrics == "auto":
            return getattr(device, "type", str(device)) in ("cuda", "mps")
        return bool(self.image_metrics)

    def best(self, images_on: bool) -> str:
        metric = self.best_metric or ("clip_i" if images_on else "heldout_loss")
        if metric in IMAGE_METRICS and not images_on:
            raise TIError(f"evaluation.best_metric={metric} needs the image metrics, which are off here",
                          "set evaluation.image_metrics=true, or evaluation.best_metric=heldout_loss")
        return metric

    @staticmethod
    def due(every: int | None, step: int, max_steps: int) -> bool:
        return step >= max_steps or bool(every and step % every == 0)
