"""`python -m ti_experiments ...`: compose the config, run, and turn every user error into one line."""

from __future__ import annotations

import errno
import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from .errors import TIError
from .evaluation import settings as _evaluation_settings  # noqa: F401 - registers ${ti.direction:...}
from .experiment import CONF_DIR
from .records.callbacks import SweepReport

# A user who sets HYDRA_FULL_ERROR gets full tracebacks; main() decides, for its own run only.
_USER_WANTS_TRACEBACK = False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _task(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .evaluation import worst
    from .experiment import objective, run

    try:
        run_dir = run(cfg, overrides=list(HydraConfig.get().overrides.task))
        return objective(run_dir, str(cfg.objective))
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


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix; None for a bug (which keeps its traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, TIError):
        return f"error: {exc}"
    if isinstance(exc, OSError) and exc.filename and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"error: no space left on the device while writing {exc.filename} (the previous copy, if any, "
                "is intact); fix: free disk space, then resume with train.resume_from_checkpoint=latest")
    if isinstance(exc, OSError) and exc.filename:  # a path the user gave: unwritable, not a folder, disk full
        return (f"error: cannot write {exc.filename} ({exc.strerror or exc.__class__.__name__}); fix: choose a "
                "writable hydra.run.dir (or TI_OUTPUT_ROOT) with free space")
    if isinstance(exc, (HydraException, OmegaConfBaseException)) and not _USER_WANTS_TRACEBACK:
        text = one_line(exc)
        return f"error: {text}; fix: {_hydra_hint(text)}"
    return None


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf messages span lines ('Available options in ...:' then one per line); fold them."""
    lines: list[str] = []
    for source in (exc, exc.__cause__):
        text = str(source or "").split("Config search path")[0]
        lines += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("object_type=")]
    pieces: list[str] = []
    listing = False
    for line in lines:
        if line in pieces:
            continue
        if listing and not line.endswith(":"):
            pieces[-1] += (" " if pieces[-1].endswith(":") else ", ") + line
            continue
        pieces.append(line)
        listing = line.endswith(":")
    return "; ".join(p.rstrip(".") for p in pieces)


def _hydra_hint(text: str) -> str:
    if "Missing mandatory value" in text:
        return "set it on the command line, e.g. concept.train_data_dir=/path/to/images"
    if "not in struct" in text or "Could not override" in text:
        return "check the key's spelling; list every key with: python -m ti_experiments --cfg job"
    if "Could not find" in text or "Available options" in text:
        return "pick one of the available options"
    return "see the README's configuration section"


def _distributed_args(argv: list[str]) -> list[str]:
    """Under accelerate launch / torchrun every process runs this command: they must share one run
    directory, and only the first may write Hydra's files and the log file."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise TIError("a multirun cannot be started under accelerate launch or torchrun",
                      "launch each job separately, or use a launcher (hydra/launcher=slurm)")
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        raise TIError("several processes need one run directory, and each would pick its own timestamp",
                      "add hydra.run.dir=outputs/runs/NAME to the command")
    if int(os.environ.get("RANK", "0")) > 0:
        argv = argv + ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return argv


def main() -> int:
    global _USER_WANTS_TRACEBACK
    _USER_WANTS_TRACEBACK = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # A log line that cannot be written (a full disk) must not print a traceback of its own; the
    # write that matters fails too and says so in one line.
    logging.raiseExceptions = _USER_WANTS_TRACEBACK
    # Let Hydra's own errors reach us instead of being printed over several lines by Hydra.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return _main()
    finally:
        if not _USER_WANTS_TRACEBACK:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _main() -> int:
    try:
        sys.argv = [sys.argv[0], *_distributed_args(sys.argv[1:])]
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


def report_or_raise(exc: Exception) -> int:
    """A user error: print its one line and return exit code 2. A bug: re-raise, traceback and all."""
    line = user_message(exc)
    if line is None:
        raise exc
    print(line, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
