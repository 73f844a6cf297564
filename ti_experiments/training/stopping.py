"""When a run stops, and which step's embedding it keeps.

The rule watches one number: the held-out loss on fixed draws (`heldout_loss`, what evaluation scores
every `evaluation.steps`, whatever the model family). It never looks at the model, so any family whose
evaluation produces that number gets the same rule.

- The kept step is the evaluated step with the lowest held-out loss; its rows are held here (a few KB)
  and become `learned_embeds.safetensors`.
- An evaluation *improves* when its loss is below the loss of the last improvement by at least
  `train.stop_min_improvement` of it (0.005: 0.5%). After `train.stop_patience` evaluations in a row
  without an improvement the run stops (a plateau, as in patience-based early stopping; DVAR, Voronov et
  al. 2023, stops on the same kind of fixed-draw loss once it stops changing). Smaller gains do not reset
  the patience, so a loss creeping down by crumbs does not keep a run going; they still move the kept step.
- Not before `train.stop_min_fraction` of `train.max_steps` (a third by default): a plateau early in
  training often breaks (the toy world's demo_style sits at its initializer's loss for 500 steps at
  batch 4, then drops by 40% within 200 more; a rule without the floor stopped it at step 480).
- `train.max_steps` stays the ceiling. `train.stop_early=false`, or no held-out loss (evaluation off),
  trains to the ceiling and keeps the last step, as the diffusers example does.

The state (a few numbers, as JSON) and the kept rows (safetensors) go into every checkpoint, so a
resumed run stops at the same step and keeps the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..records.run_dir import read_stopping_state, write_stopping_state
from .settings import TrainSettings

log = logging.getLogger(__name__)

WATCHED = "heldout_loss"


@dataclass
class Plateau:
    """The rule's state: what it has seen and decided so far (JSON in a checkpoint)."""

    patience: int
    min_improvement: float
    min_step: int = 0  # no stop before this step: early plateaus often break (train.stop_min_fraction)
    best_step: int | None = None  # the kept step: the lowest loss so far
    best_loss: float | None = None
    bar_step: int | None = None  # the last improvement, which the next one must beat by min_improvement
    bar_loss: float | None = None
    waited: int = 0  # evaluations since the last improvement
    history: list = field(default_factory=list)  # [step, loss] of every evaluation seen

    def observe(self, step: int, loss: float) -> bool:
        """Take one evaluation; True when it is the new lowest loss (its rows are to be kept)."""
        if not math.isfinite(loss):
            self.waited += 1
            return False
        self.history.append([step, loss])
        if self.bar_loss is None or loss < self.bar_loss * (1 - self.min_improvement):
            self.bar_step, self.bar_loss, self.waited = step, loss, 0
        else:
            self.waited += 1
        if self.best_loss is None or loss < self.best_loss:
            self.best_step, self.best_loss = step, loss
            return True
        return False

    @property
    def done(self) -> bool:
        return self.waited >= self.patience and bool(self.history) and self.history[-1][0] >= self.min_step

    def reason(self) -> str:
        return (f"the held-out loss did not improve by {self.min_improvement:.2%} in {self.waited} evaluations "
                f"after step {self.bar_step} ({self.bar_loss:.4f})")


class Stopping:
    """The rule of one run, the rows of its kept step, and both saved with (and restored from) a checkpoint."""

    def __init__(self, train: TrainSettings, watching: bool):
        """`watching`: the run has a held-out loss to watch (evaluation is on for this model)."""
        self.train = train
        self.active = bool(train.stop_early and watching)
        self.why_off = (None if self.active else "train.stop_early=false" if not train.stop_early
                        else "no held-out loss to watch (evaluation is off)")
        self.rule = Plateau(train.stop_patience, train.stop_min_improvement, train.stop_min_step)
        self.kept: list[torch.Tensor] | None = None

    def observe(self, step: int, values: dict, vectors: list[torch.Tensor]) -> None:
        """An evaluation's values (the main process's); the rows are copied when this step is the lowest."""
        if self.active and WATCHED in values and self.rule.observe(step, float(values[WATCHED])):
            self.kept = [v.detach().float().cpu().clone() for v in vectors]

    @property
    def stop(self) -> bool:
        return self.active and self.rule.done

    def kept_vectors(self, last: list[torch.Tensor]) -> list[torch.Tensor]:
        """The rows to save: the kept step's, or the last step's where the rule kept none."""
        return self.kept if self.active and self.kept is not None else last

    def save(self, folder: Path) -> None:
        """Into a checkpoint folder (before it is marked complete)."""
        write_stopping_state(folder, {"rule": asdict(self.rule), "active": self.active}, self.kept)

    def load(self, folder: Path) -> None:
        """From the checkpoint a run resumes; a checkpoint without the state (an older run) starts it anew."""
        found = read_stopping_state(folder)
        if found is None:
            if self.active:
                log.warning("%s holds no stopping state (an older checkpoint): the rule starts watching anew",
                            folder)
            return
        state, kept = found
        rule = state.get("rule") or {}
        rule.update(patience=self.train.stop_patience, min_improvement=self.train.stop_min_improvement,
                    min_step=self.train.stop_min_step)
        self.rule = Plateau(**rule)
        self.kept = kept

    def outcome(self, step: int, max_steps: int, stopped: bool) -> dict:
        """For run.json and summary.json: where the run stopped and why, which step was kept and why."""
        if stopped:
            why = f"stopped early: {self.rule.reason()}"
        elif step >= max_steps:
            why = f"reached train.max_steps={max_steps}"
        else:
            why = f"stopped at step {step}"
        if self.active and self.kept is not None:
            kept, kept_by = self.rule.best_step, f"lowest held-out loss ({self.rule.best_loss:.4f})"
        else:
            kept, kept_by = step, f"last step ({self.why_off or 'no held-out loss scored'})"
        return {"stopped_step": step, "stop_reason": why, "kept_step": kept, "kept_by": kept_by,
                "kept_heldout_loss": self.rule.best_loss if self.active and self.kept is not None else None,
                "stop_rule": {"active": self.active, "patience": self.rule.patience,
                              "min_improvement": self.rule.min_improvement, "min_step": self.rule.min_step,
                              "history": self.rule.history}}
