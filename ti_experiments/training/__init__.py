"""The Accelerate training loop, checkpoints and resume."""

from .loop import TrainingJob, TrainResult, run_training

__all__ = ["TrainResult", "TrainingJob", "run_training"]
