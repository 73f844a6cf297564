"""The Accelerate training loop, checkpoints and resume."""

from .loop import TrainResult, run_training

__all__ = ["TrainResult", "run_training"]
