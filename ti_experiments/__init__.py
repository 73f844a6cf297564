"""Textual inversion experiments: Hydra configs, an Accelerate loop, files that load into diffusers."""

__version__ = "0.1.0"
