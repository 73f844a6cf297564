"""Settings checked before anything is loaded, so a typo costs a second, not a model load.

The typed settings (`train`, `hardware`, and the run's own `seed` and learning rate) check their types
and ranges as they are made; this module makes them from a composed config.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from typing import Literal

from .settings import Settings, bound
from .training.settings import HardwareSettings, TrainSettings


@dataclass
class ConceptSettings(Settings):
    """The `concept` group (conf/concept/*.yaml): what is learned, from which pictures."""

    GROUP = "concept"

    placeholder_token: str = bound("<concept>", example="'<my-thing>'")
    initializer_token: str = bound("toy", example="toy")
    num_vectors: int = bound(1, minimum=1, example="1")
    # an embedding to start from instead of the initializer (any format run_dir.read_embedding reads)
    init_from: str | None = bound(None, example="path/to/embedding.safetensors")
    learnable_property: Literal["object", "style"] = "object"
    train_data_dir: str = bound("", example="/path/to/images")
    validation_prompt: str | None = bound(None, example="'a photo of <my-thing>'")
    # where the images come from when the folder is empty (a node with _target_), or null
    source: dict | None = None


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
