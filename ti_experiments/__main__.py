"""`python -m ti_experiments ...`: compose the config, run, and turn every user error into one line."""

from __future__ import annotations

import logging
import os
import signal
import sys

import hydra
from omegaconf import DictConfig

from . import errors, slurm
from .config import CONF_DIR, CONFIG_NAME, SWEEPS_DIR
from .errors import TIError, hydra_arguments, report_or_raise, user_message
from .evaluation import settings as _evaluation_settings  # noqa: F401 - registers ${ti.direction:...}
from .records.callbacks import SweepReport

@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=CONFIG_NAME)
def _task(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .evaluation import worst
    from .experiment import objective, run

    try:
        run_dir = run(cfg, overrides=list(HydraConfig.get().overrides.task))
        return objective(run_dir, str(cfg.objective))
    except KeyboardInterrupt as exc:  # stopped cleanly for a signal, its checkpoint saved
        slurm.hand_over(getattr(exc, "signum", signal.SIGINT))  # a SLURM job: requeued or ended, not returned
        raise
    except Exception as exc:
        line = user_message(exc)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # The job is recorded as failed in its run.json; the sweep goes on with the next one.
            if line is None:
                logging.getLogger("ti_experiments").exception("job %s failed", HydraConfig.get().job.num)
            else:
                print(line, file=sys.stderr)
            return worst(str(cfg.objective))  # a searching sweeper (Optuna) treats it as the worst trial
        if line is None:
            raise
        print(line, file=sys.stderr)  # here, before Hydra adds its own "Error executing job" line
        sys.exit(2)


def _distributed_args(argv: list[str]) -> list[str]:
    """Under accelerate launch / torchrun every process runs this command: they must share one run
    directory, and only the first may write the log file (and hold the folder, and write Hydra's files)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise TIError("a multirun cannot be started under accelerate launch or torchrun",
                      "launch each job separately, or use a launcher (hydra/launcher=slurm)")
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        raise TIError("several processes need one run directory, and each would pick its own timestamp",
                      "add hydra.run.dir=outputs/runs/NAME to the command")
    if int(os.environ.get("RANK", "0")) > 0:
        argv = argv + ["hydra/job_logging=stdout"]
    return argv


def _sweep_args(argv: list[str]) -> list[str]:
    """`--config-name num_vectors` finds the package's sweep files from any directory (an installed
    wheel has no sweeps/ folder beside the user); an explicit --config-dir wins."""
    if any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in argv):
        return argv
    names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-name", "-cn")]
    names += [a.split("=", 1)[1] for a in argv if a.startswith("--config-name=")]
    if names and (SWEEPS_DIR / f"{names[-1]}.yaml").is_file():
        return ["--config-dir", str(SWEEPS_DIR), *argv]
    return argv


def main() -> int:
    errors.SHOW_HYDRA_TRACEBACKS = wants_traceback = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # A log line that cannot be written (a full disk) must not print a traceback of its own; the
    # write that matters fails too and says so in one line.
    logging.raiseExceptions = wants_traceback
    # Let Hydra's own errors reach us instead of being printed over several lines by Hydra.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return _main()
    finally:
        if not wants_traceback:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _main() -> int:
    hydra_arguments("python -m ti_experiments")
    try:
        sys.argv = [sys.argv[0], *_sweep_args(_distributed_args(sys.argv[1:]))]
        _task()
        failed = SweepReport.failed_jobs
        if failed:
            print(f"error: {len(failed)} job(s) of the sweep failed: {', '.join(failed)}; fix: see each job's "
                  "run.json and the sweep's report.md", file=sys.stderr)
            return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or the loop's clean stop (signals.Interrupted)
        print(f"error: {exc}" if str(exc) else "error: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)
    except Exception as exc:
        return report_or_raise(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
