"""Settings checked before anything is loaded, so a typo costs a second, not a model load.

The typed settings (`train`, `hardware`, and the run's own `seed` and learning rate) check their types
and ranges as they are made; this module makes them from a composed config.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from .settings import Settings, bound
from .training.settings import HardwareSettings, TrainSettings


@dataclass
class RunSettings(Settings):
    """The top-level keys a run checks besides its groups."""

    seed: int = bound(0, minimum=0, example="0")


@dataclass
class LearningRate(Settings):
    """`optimizer.lr`: the optimizer node is a factory (any torch optimizer), its `lr` is checked here."""

    GROUP = "optimizer"

    lr: float = bound(5e-4, positive=True, example="5e-4")


def check_run_settings(cfg: DictConfig) -> tuple[TrainSettings, HardwareSettings]:
    """The run's `train` and `hardware` settings, checked with the seed and the learning rate."""
    RunSettings(seed=cfg.seed)
    train = TrainSettings.from_node(cfg.train)
    LearningRate(lr=cfg.optimizer.get("lr"))
    return train, HardwareSettings.from_node(cfg.hardware)
