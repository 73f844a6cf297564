"""The `train` and `hardware` config groups as typed settings: what a run trains, and on what."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..settings import Settings, bound


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
