"""The `evaluation` config group, and which way each metric is better (for the best embedding and Optuna)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import OmegaConf

from ..errors import TIError

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
class EvaluationSettings:
    """The `evaluation` config node (conf/evaluation/*.yaml)."""

    enabled: bool = True
    # held-out loss every N optimizer steps and at the end (null: only at the end)
    steps: int | None = 100
    heldout_samples: int = 16
    heldout_seed: int = 0
    # the concept in plain words ("large orange circle with ears"): heldout_loss_words scores that prompt too
    description: str | None = None
    heldout_batch_size: int = 8
    # true, false, or "auto": on where there is a GPU (or MPS), off on a CPU
    image_metrics: bool | str = "auto"
    # image metrics every N optimizer steps and at the end (null: only at the end)
    image_steps: int | None = 500
    # "dreambench" (the DreamBench object prompts, or our style prompts for a style), or a list with {}
    prompts: object = "dreambench"
    num_prompts: int | None = None
    num_images: int = 4
    batch_size: int = 8
    # the word that stands for the concept in CLIP-T's text (null: the concept's initializer token)
    text_subject: str | None = None
    clip_model: str = "openai/clip-vit-base-patch32"
    dino_model: str = "facebook/dino-vits16"
    # learned_embeds-best.safetensors by this metric (null: clip_i with image metrics, else heldout_loss)
    best_metric: str | None = None

    def __post_init__(self):
        if self.image_metrics not in (True, False, "auto"):
            raise TIError(f"evaluation.image_metrics={self.image_metrics!r} is unknown", "use true, false or auto")
        for key in ("heldout_samples", "heldout_batch_size", "num_images", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise TIError(f"evaluation.{key}={value!r} must be an integer >= 1", f"set evaluation.{key}")
        for key in ("steps", "image_steps", "num_prompts"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise TIError(f"evaluation.{key}={value!r} must be an integer >= 1 or null", f"set evaluation.{key}")
        if self.best_metric is not None and self.best_metric not in METRICS:
            raise TIError(f"evaluation.best_metric={self.best_metric!r} is unknown",
                          f"use one of {', '.join(METRICS)} (or null)")
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
