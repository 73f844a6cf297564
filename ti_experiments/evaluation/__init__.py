"""How well a concept was learned: held-out denoising loss, CLIP-I / CLIP-T / DINO, the best embedding."""

from .evaluator import Evaluator
from .settings import METRICS, EvaluationSettings, direction, worst

__all__ = ["METRICS", "EvaluationSettings", "Evaluator", "direction", "worst"]
