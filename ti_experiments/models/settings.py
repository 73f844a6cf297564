"""The `model` config group as typed settings, checked before any weights are read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import TIError
from ..config.settings import FactorySettings, bound


@dataclass
class ModelSettings(FactorySettings):
    """A model option (conf/model/*.yaml): where the weights are, and the resolution it was trained at;
    `build()` loads it with the loader its `_target_` names."""

    GROUP = "model"
    EXAMPLE_TARGET = "ti_experiments.models.load_components"

    # a Hub id or a local diffusers folder
    pretrained_model_name_or_path: str = bound("", example="stable-diffusion-v1-5/stable-diffusion-v1-5")
    revision: str | None = bound(None, example="main")
    variant: str | None = bound(None, example="fp16")
    # random_init=true: this architecture with random weights, built offline (benchmarks)
    architecture: Literal["sd15", "sd21", "sdxl"] | None = None
    random_init: bool = False
    cache_dir: str | None = bound(None, example="~/.cache/ti_experiments")
    resolution: int = bound(512, minimum=8, example="512")
    # the precision the hardware presets choose for this model where the hardware can run it
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.random_init and self.architecture is None:
            raise TIError("model.random_init=true needs model.architecture", "use e.g. model.architecture=sd15")
        if not self.random_init and not self.pretrained_model_name_or_path:
            raise TIError("model.pretrained_model_name_or_path is empty",
                          "set it to a local diffusers folder or a Hub id")
