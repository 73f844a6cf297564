"""The `train`, `hardware`, `optimizer` and `lr_scheduler` config groups as typed settings: what a run
trains, on what, and how its steps are taken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import TIError
from ..config.settings import FactorySettings, Settings, bound


@dataclass
class TrainSettings(Settings):
    """The `train` node of conf/config.yaml (the experiment presets change some of it)."""

    GROUP = "train"

    max_steps: int = bound(3000, minimum=1, example="3000")
    batch_size: int = bound(1, minimum=1, example="1")
    gradient_accumulation_steps: int = bound(1, minimum=1, example="4")
    # lr x gradient_accumulation_steps x batch_size x processes, as in the diffusers example
    scale_lr: bool = bound(True, example="true")
    # every N optimizer steps; 0 or null: never (the final embedding is always written)
    save_steps: int | None = bound(500, minimum=0, example="500")
    checkpointing_steps: int | None = bound(500, minimum=0, example="500")
    checkpoints_total_limit: int | None = bound(None, minimum=1, example="3")
    # null, "latest" or a path to a checkpoint-N or a run directory
    resume_from_checkpoint: str | None = bound(None, example="latest")
    # stop once the held-out loss has stopped improving and keep its lowest step (training/stopping.py);
    # false: train to max_steps and keep the last step, as the diffusers example does
    stop_early: bool = bound(True, example="false")
    # evaluations in a row without an improvement before the run stops
    stop_patience: int = bound(3, minimum=1, example="3")
    # an improvement: a held-out loss below the loss of the last improvement by at least this share
    stop_min_improvement: float = bound(0.005, minimum=0, example="0.005")
    # the rule stops a run only from this share of max_steps on (early plateaus often break)
    stop_min_fraction: float = bound(0.33, minimum=0, maximum=1, example="0.33")
    # Min-SNR-gamma loss weighting (Hang et al. 2023; invoke-training's TI default is 5): null is the
    # plain mean squared error of the diffusers example
    snr_gamma: float | None = bound(None, positive=True, example="5.0")
    # rescale every learned vector after each optimizer step to the mean norm of the vocabulary's rows
    # (the norm kept at the vocabulary's scale, as Directional TI and OneTrainer's preserve_embedding_norm do)
    keep_norm: bool = bound(False, example="true")

    def __post_init__(self):
        super().__post_init__()
        if self.stop_min_improvement >= 1:
            raise TIError(f"train.stop_min_improvement={self.stop_min_improvement} is a share of the loss and "
                          "must be below 1", "use e.g. train.stop_min_improvement=0.005 (0.5%)")
        if not 0 <= self.stop_min_fraction <= 1:
            raise TIError(f"train.stop_min_fraction={self.stop_min_fraction} is a share of train.max_steps",
                          "use a value from 0 to 1, e.g. train.stop_min_fraction=0.33")

    @property
    def stop_min_step(self) -> int:
        """The first step at which the stopping rule may end the run."""
        return int(self.max_steps * self.stop_min_fraction)

    def saves_at(self, step: int) -> bool:
        return bool(self.save_steps) and step % self.save_steps == 0

    def checkpoints_at(self, step: int) -> bool:
        return bool(self.checkpointing_steps) and step % self.checkpointing_steps == 0


@dataclass
class HardwareSettings(Settings):
    """The `hardware` group (conf/hardware/base.yaml, and the presets' differences from it)."""

    GROUP = "hardware"

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    allow_tf32: bool = False
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "xformers", "default"] = "sdpa"
    channels_last: bool = True
    offload_idle: bool = False
    batch_size: int = bound(1, minimum=1, example="1")
    gradient_accumulation_steps: int = bound(1, minimum=1, example="4")


@dataclass
class OptimizerSettings(FactorySettings):
    """The `optimizer` group: any torch optimizer (`_target_`, built with the parameters by the loop)."""

    GROUP = "optimizer"
    EXAMPLE_TARGET = "torch.optim.AdamW"
    SUPPLIED = ("params",)

    lr: float = bound(5e-4, positive=True, example="5e-4")
    weight_decay: float | None = bound(None, minimum=0, example="1e-2")
    eps: float | None = bound(None, positive=True, example="1e-8")
    momentum: float | None = bound(None, minimum=0, example="0.9")
    betas: list[float] | None = bound(None, minimum=0, example="[0.9,0.999]")

    def __post_init__(self):
        super().__post_init__()
        if self.betas is not None and (len(self.betas) != 2 or not all(b < 1 for b in self.betas)):
            raise TIError(f"optimizer.betas={self.betas!r} is not two numbers in [0, 1)",
                          "use e.g. optimizer.betas=[0.9,0.999]")


@dataclass
class SchedulerSettings(FactorySettings):
    """The `lr_scheduler` group: a diffusers schedule (`_target_`, built with the optimizer and the steps)."""

    GROUP = "lr_scheduler"
    EXAMPLE_TARGET = "diffusers.optimization.get_scheduler"
    SUPPLIED = ("optimizer", "num_training_steps", "last_epoch", "step_rules")

    # get_scheduler's schedule name (null when _target_ is a schedule function itself)
    name: str | None = bound(None, example="constant")
    num_warmup_steps: int = bound(0, minimum=0, example="100")
    num_cycles: float | None = bound(None, positive=True, example="1")
    power: float | None = bound(None, positive=True, example="1.0")

    def __post_init__(self):
        super().__post_init__()
        if self.name is not None:
            from diffusers.optimization import SchedulerType

            names = [t.value for t in SchedulerType]
            if self.name not in names:
                raise TIError(f"lr_scheduler.name={self.name!r} is unknown", f"use one of {', '.join(names)}")
