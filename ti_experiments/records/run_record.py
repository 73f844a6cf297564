"""The run directory as the record: run.json (status) kept true, metrics.jsonl rows, summary.json's figures;
the files' names and formats are run_dir's."""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import run_dir as run_files
from ..config import hydra_choices
from .run_dir import read_metrics, write_json
from . import environment
from .memory import peak_memory_bytes

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "failed", "interrupted")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RunRecord:
    """run.json, written when the run starts (`start`) and kept true: its status, attempts and facts."""

    def __init__(self, run_dir: Path, cfg: DictConfig, overrides: list[str] | None = None, continues: bool = False):
        """`continues`: this run goes on from an earlier attempt of itself in the folder (a requeued SLURM
        job); that attempt's start, end, status and error move to `attempts`, oldest first."""
        from .. import slurm

        self.run_dir = Path(run_dir)
        self.path = self.run_dir / run_files.RECORD
        attempts = earlier_attempts(run_files.read_record(self.run_dir)) if continues else []
        self.data = {
            "status": "running",
            "error": None,
            "run_dir": str(self.run_dir.resolve()),
            "command": environment.command_line(),
            "overrides": overrides,
            # the option of each config group (what `evaluate` asks the configs again, e.g. the model's)
            "choices": hydra_choices(),
            "seeds": {"train": int(cfg.seed), "validation": OmegaConf.select(cfg, "validation.seed")},
            "start_time": _now(),
            "end_time": None,
            "git": environment.git_state(),
            "versions": environment.package_versions(),
            "hardware": environment.hardware(),
        }
        identity = slurm.job_identity()
        if identity:
            self.data["slurm"] = identity
        if attempts:
            self.data["attempts"] = attempts

    def start(self) -> None:
        """run.json, before any other file of the run: a run stopped at any moment leaves none of its files
        without its record (a requeued SLURM job finds its own run again, or an empty folder to start over
        in). A run that ends before it started writes its record then (`finish`)."""
        write_json(self.path, self.data)

    def note(self, **facts) -> None:
        """Facts learned after the start (e.g. the embedding a run started from)."""
        self.data.update(facts)
        write_json(self.path, self.data)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        assert status in STATUSES
        self.data["status"] = status
        self.data["end_time"] = _now()
        if error is not None:
            self.data["error"] = {
                "type": type(error).__name__,
                "message": str(error),
                "traceback": "".join(traceback.format_exception(error)),
            }
            try:
                write_json(self.path, self.data)
            except OSError as exc:  # e.g. the full disk that stopped the run: report that, not this
                log.warning("could not record the run's end in %s: %s", self.path, exc)
            return
        write_json(self.path, self.data)


def record_failure(run_dir: Path, message: str, log: str | None = None, overrides: list[str] | None = None) -> bool:
    """A run its scheduler ended before it could say so itself (killed, out of memory or time, a dead node):
    its run.json says failed, why, and where the log is (the folder and a bare record are made when the
    job never started). A completed run is left as it is: False."""
    record = run_files.read_record(run_dir)
    if record.get("status") == "completed":
        return False
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    record = {"overrides": overrides, **record} if record else {"overrides": overrides, "start_time": None}
    record.update(status="failed", end_time=_now(),
                  error={"type": "JobEnded", "message": message, "log": log, "traceback": None})
    write_json(Path(run_dir) / run_files.RECORD, record)
    return True


def earlier_attempts(record: dict) -> list[dict]:
    """The attempts of a run before this one: those its record kept, and the record's own. An attempt
    killed without a clean stop (SIGKILL, a dead node) left "running": it was interrupted."""
    if not record:
        return []
    error = record.get("error") or {}
    status = record.get("status")
    last = {"start_time": record.get("start_time"), "end_time": record.get("end_time"),
            "status": "interrupted" if status == "running" else status,
            "error": error.get("message") or ("killed without a clean stop" if status == "running" else None),
            "resumed_from": record.get("resumed_from"), "slurm": record.get("slurm")}
    return [*(record.get("attempts") or []), last]


class MetricsLog:
    """One JSON line per optimizer step in metrics.jsonl, and the same values to the trackers."""

    def __init__(self, run_dir: Path, accelerator, device, start_step: int = 0):
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator
        self.device = device
        self.started = time.perf_counter()
        self.start_step = start_step

    def log(self, step: int, values: dict) -> dict:
        seconds = time.perf_counter() - self.started
        row = {"step": step, **values, "seconds": round(seconds, 4),
               "steps_per_sec": round((step - self.start_step) / seconds, 4) if seconds > 0 else None,
               "peak_memory_bytes": peak_memory_bytes(self.device)}
        self.accelerator.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)
        if self.accelerator.is_main_process:
            run_files.append_metrics(self.run_dir, row)
        return row


def write_summary(run_dir: Path, *, final_loss, steps: int, wall_seconds: float, train_seconds: float,
                  steps_trained: int, device, extra: dict | None = None) -> dict:
    embeds = Path(run_dir) / run_files.EMBEDDING
    losses = [row["loss"] for row in read_metrics(run_dir) if row.get("loss") is not None]
    tail = losses[-max(1, len(losses) // 10):]
    summary = {
        "final_loss": final_loss,
        # the per-step loss is very noisy: the mean over the last 10% of steps compares runs better
        "avg_loss": sum(tail) / len(tail) if tail else None,
        "steps": steps,
        "wall_seconds": round(wall_seconds, 3),
        "train_seconds": round(train_seconds, 3),
        "steps_per_sec": round(steps_trained / train_seconds, 4) if train_seconds > 0 else None,
        "peak_memory_bytes": peak_memory_bytes(device),
        "learned_embeds_sha256": sha256(embeds) if embeds.exists() else None,
        **(extra or {}),
    }
    run_files.write_summary(run_dir, summary)
    return summary
