"""The Accelerate training loop, checkpoints and resume."""

from . import packed
from .loop import TrainingJob, TrainResult, run_training

__all__ = ["TrainResult", "TrainingJob", "packed", "run_training"]
