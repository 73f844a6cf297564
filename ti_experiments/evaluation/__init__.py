"""How well a concept was learned: held-out denoising loss (what the stopping rule watches), CLIP-I / CLIP-T / DINO."""

from .settings import METRICS, EvaluationSettings, direction, worst

__all__ = ["METRICS", "EvaluationSettings", "Evaluator", "direction", "worst"]


def __getattr__(name):
    # The evaluator needs torch; the settings do not, and every command imports them to compose its config
    # (${ti.direction:...}): `python -m ti_experiments ... --cfg job` answers in 0.5 s instead of 3.6 s.
    if name == "Evaluator":
        from .evaluator import Evaluator

        return Evaluator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
