"""The `evaluation` config group, and which way each metric is better (for reports and Optuna)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from omegaconf import OmegaConf

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


# evaluation.steps=auto: optimizer steps between two evaluations per held-out triple, per item of a step
AUTO_STEPS_PER_TRIPLE = 15

@dataclass
class EvaluationSettings(Settings):
    """The `evaluation` config node (conf/evaluation/*.yaml)."""

    GROUP = "evaluation"

    enabled: bool = True
    # held-out loss every N optimizer steps and at the end (0 or null: only at the end, as train.save_steps);
    # "auto": as often as costs about 5% of the training time (`cadence`)
    steps: int | Literal["auto"] | None = bound("auto", minimum=0, example="auto")
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
    # words clip_model proposes from the concept's images, scored with concept.initializer_token's own by
    # the held-out loss before training; the lowest starts (0: the initializer word starts, unscored)
    initializer_proposals: int = bound(0, minimum=0, example="8")
    dino_model: str = bound("facebook/dino-vits16", example="facebook/dino-vits16")

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

    def cadence(self, items_per_step: int) -> int | None:
        """Every how many optimizer steps the held-out loss is scored. `auto`: K triples every 15 K / (items
        per step) steps, rounded up to a multiple of 10 (at least 10), which costs at most about 5% of the
        training time: a held-out triple measured at 0.52 (SD 1.5's shapes on a CPU, 256 px) to 0.65 (the
        toy world) of a training item, not the third a forward pass alone would suggest (bench's
        evaluation_share prints it for any model). A number of steps only, never a time: a resumed run
        scores at the same steps."""
        if self.steps != "auto":
            return self.steps or None
        every = math.ceil(AUTO_STEPS_PER_TRIPLE * self.heldout_samples / max(1, items_per_step))
        return max(10, math.ceil(every / 10) * 10)

    @staticmethod
    def due(every: int | None, step: int, max_steps: int) -> bool:
        return step >= max_steps or bool(every and step % every == 0)
