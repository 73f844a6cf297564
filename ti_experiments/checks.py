"""Settings checked before anything is loaded, so a typo costs a second, not a model load.

Hydra accepts any value for a key that exists (`train.max_steps=abc` composes); these checks turn a
value of the wrong type or out of range into one line that names the key and a value that works.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from .errors import TIError


def _integer(value, key: str, minimum: int, example: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok:
        what = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise TIError(f"{key}={value!r} is not {what}", f"use e.g. {key}={example}")


def check_run_settings(cfg: DictConfig) -> None:
    train = cfg.train
    _integer(cfg.seed, "seed", 0, "0")
    _integer(train.max_steps, "train.max_steps", 1, "3000")
    _integer(train.batch_size, "train.batch_size", 1, "1")
    _integer(train.gradient_accumulation_steps, "train.gradient_accumulation_steps", 1, "4")
    # 0 or null: never (the final embedding is always written)
    _integer(train.save_steps, "train.save_steps", 0, "500", allow_none=True)
    _integer(train.checkpointing_steps, "train.checkpointing_steps", 0, "500", allow_none=True)
    _integer(train.checkpoints_total_limit, "train.checkpoints_total_limit", 1, "3", allow_none=True)
    if not isinstance(train.scale_lr, bool):
        raise TIError(f"train.scale_lr={train.scale_lr!r} is not true or false", "use e.g. train.scale_lr=true")
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise TIError(f"optimizer.lr={lr!r} is not a positive number", "use e.g. optimizer.lr=5e-4")
