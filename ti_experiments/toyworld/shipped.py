"""Where the toy world's pretrained weights live: inside the package, so a wheel carries them."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_DIR = WEIGHTS_DIR / "model"
JUDGE_DIR = WEIGHTS_DIR / "judge"


def weights_path(relative: str = "") -> str:
    """`${ti.toyworld:model}` in a config: a folder of the shipped weights, wherever the package is installed."""
    return str(WEIGHTS_DIR / relative)


def _register() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("ti.toyworld"):
        OmegaConf.register_new_resolver("ti.toyworld", weights_path)


_register()
