"""Hydra callback: a multirun's folder is its own; when a multirun ends, write its report and say which jobs
failed."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class NewRunFolder(Callback):
    """Hydra makes a run's folder (and starts ti.log in it) before the run checks its settings: a run
    refused then must not leave a folder holding only that log. This remembers which folders Hydra is
    about to make, so that only those are removed, never one the user had."""

    made: Path | None = None  # the outermost folder of the run's path that did not exist yet

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        folder, NewRunFolder.made = Path(str(config.hydra.run.dir)).absolute(), None
        while not folder.exists():
            NewRunFolder.made, folder = folder, folder.parent

    @classmethod
    def remove_if_unused(cls, run_dir: Path) -> None:
        """Remove the run's folder if Hydra made it and it holds nothing but the log (and the folders
        above it that Hydra made, once empty)."""
        from .run_dir import LOG

        run_dir = Path(run_dir).absolute()
        if cls.made is None or not (run_dir == cls.made or cls.made in run_dir.parents) or not run_dir.is_dir() \
                or any(p.name != LOG for p in run_dir.iterdir()):
            return
        for handler in logging.getLogger().handlers[:]:  # the log file is closed before it goes
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
                logging.getLogger().removeHandler(handler)
                handler.close()
        (run_dir / LOG).unlink(missing_ok=True)
        folder = run_dir
        while folder == cls.made or cls.made in folder.parents:
            try:
                folder.rmdir()  # only an empty folder goes
            except OSError:
                return
            folder = folder.parent


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
