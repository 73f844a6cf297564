"""How well a concept was learned: held-out denoising loss, CLIP-I / CLIP-T / DINO, the best embedding."""

from .settings import METRICS, EvaluationSettings, direction, worst

__all__ = ["METRICS", "EvaluationSettings", "Evaluator", "direction", "worst"]


def __getattr__(name):
    # The evaluator needs torch; settings do not. Config checks (which import the settings) answer a bad
    # value in a second or two instead of after torch has loaded.
    if name == "Evaluator":
        from .evaluator import Evaluator

        return Evaluator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
