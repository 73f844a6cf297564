"""Hydra callback: a multirun's folder is its own; when a multirun ends, write its report and say which jobs
failed."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    failed_jobs: list[str] = []  # read by the command line to set its exit code

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Before Hydra writes multirun.yaml: a sweep folder that holds another sweep is refused, unless
        the sweep resumes its jobs (each job then resumes its own folder)."""
        from omegaconf import OmegaConf

        from . import run_dir as run_files
        from ..errors import TIError

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if OmegaConf.select(config, "train.resume_from_checkpoint", default=None) or not sweep_dir.is_dir():
            return
        taken = (sweep_dir / "multirun.yaml").is_file() or any(run_files.holds_run(p) for p in sweep_dir.iterdir())
        if taken:
            refused = TIError(f"{sweep_dir} already holds a sweep; a new one there would overwrite its jobs",
                              "start the sweep in a new folder (another hydra.sweep.dir, or none for a fresh "
                              "timestamped one), or continue it with train.resume_from_checkpoint=latest")
            # Hydra turns a callback's exception into a warning and goes on: only an exit stops the sweep
            print(f"error: {refused}", file=sys.stderr)
            raise SystemExit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from ..report import ReportError, report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            result = report([sweep_dir])
        except ReportError as exc:
            log.warning("no sweep report: %s", exc)
            return
        status = result["header"].index("status")
        failed = [row[0] for row in result["rows"] if row[status] != "completed"]
        SweepReport.failed_jobs[:] = failed
        log.info("sweep report: %s", sweep_dir / "report.md")
        if failed:
            log.warning("%d of %d jobs did not complete: %s", len(failed), len(result["rows"]), ", ".join(failed))
            for line in result["failures"]:
                log.warning("%s", line)
