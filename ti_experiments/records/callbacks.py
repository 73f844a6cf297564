"""Hydra callback: when a multirun ends, write its report and say which jobs failed."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    failed_jobs: list[str] = []  # read by the command line to set its exit code

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
