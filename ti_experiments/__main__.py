"""`python -m ti_experiments ...`: compose the config, run, and turn every user error into one line."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from . import errors
from .cli_help import describe, epilog, lines
from .config import CONF_DIR, CONFIG_NAME, SWEEPS_DIR, options
from .errors import TIError, hydra_arguments, report_or_raise, user_message
from .evaluation import settings as _evaluation_settings  # noqa: F401 - registers ${ti.direction:...}
from .records.callbacks import NewRunFolder, SweepReport

@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=CONFIG_NAME)
def _task(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .evaluation import worst
    from .experiment import objective, run
    from .quiet import loading_bars_off

    loading_bars_off()
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
        NewRunFolder.remove_if_unused(cfg.paths.output_dir)  # a refused run leaves no folder behind
        sys.exit(2)


# --- --help -----------------------------------------------------------------------------------------------
# Built here rather than by Hydra: Hydra's generic page lists every config group, the internal ones
# included (hardware/base), and says neither that `+concept=NAME` is required nor which other commands
# exist. The groups and options are read from conf/, so the page cannot go stale.

# The config groups a user chooses among (experiment is pulled in by the demo concepts, data and hub
# have one option each); options that only other options build on are left out.
USER_GROUPS = ("model", "hardware", "optimizer", "lr_scheduler", "evaluation", "logger")
INTERNAL_OPTIONS = {"hardware": {"base"}}

TRAIN_EXAMPLES = (
    ("python -m ti_experiments +concept=demo", "the offline demo: the toy world, on a CPU, in minutes"),
    ("python -m ti_experiments +concept=cat_toy hardware=low_vram", "SD 1.5 on a GPU with little memory"),
    ("python -m ti_experiments -m +concept=demo concept.num_vectors=1,4 optimizer.lr=5e-4,2e-3",
     "a sweep: one run per combination, then a report"),
)


def _defaults() -> dict[str, str]:
    """The option config.yaml chooses for each group (`model` -> `sd15`)."""
    import yaml

    config = yaml.safe_load((CONF_DIR / f"{CONFIG_NAME}.yaml").read_text())
    return {k: v for item in config.get("defaults", []) if isinstance(item, dict) for k, v in item.items()}


def group_options(group: str) -> list[str]:
    """A group's options as a user chooses them, the default first and marked."""
    names = [o for o in options(group) if o not in INTERNAL_OPTIONS.get(group, set())]
    default = _defaults().get(group)
    if default in names:
        names = [f"{default} (default)"] + [o for o in names if o != default]
    return names


def _toyworld_concepts() -> list[str]:
    """The concepts whose images the toy world draws (offline)."""
    return [c for c in options("concept")
            if "draw_toyworld_concept" in (CONF_DIR / "concept" / f"{c}.yaml").read_text()]


def training_help() -> str:
    """`python -m ti_experiments --help`."""
    groups = [(g, ", ".join(group_options(g))) for g in USER_GROUPS]
    groups.append(("hydra/launcher", "with -m: " + ", ".join(options("hydra/launcher"))
                   + " (default: one job after another)"))
    width = max(len(g) for g, _ in groups) + len("=OPTION")
    return "\n".join([
        "usage: python -m ti_experiments +concept=NAME [GROUP=OPTION ...] [KEY=VALUE ...]",
        "       python -m ti_experiments -m +concept=NAME KEY=A,B ...   (a sweep)",
        "",
        describe("ti_experiments")[:-1] + " (default: outputs/runs/<date>/<time>).",
        "",
        "required:",
        *lines([("+concept=NAME", ", ".join(options("concept")))], width),
        *lines([("", f"the toy world's (offline): {', '.join(_toyworld_concepts())}; your own images:"),
                 ("", "+concept=my_style concept.train_data_dir=DIR (a style; cat_toy for an object)")], width),
        "",
        "groups (GROUP=OPTION):",
        *lines([(f"{g}=OPTION", o) for g, o in groups], width),
        "",
        "keys (KEY=VALUE), e.g. train.max_steps=3000 optimizer.lr=5e-4 concept.num_vectors=4 seed=0",
        "  hydra.run.dir=DIR; every key and its value: python -m ti_experiments +concept=demo --cfg job",
        "",
        epilog("ti_experiments", TRAIN_EXAMPLES),
    ])


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
    if any(a in ("-h", "--help") for a in sys.argv[1:]):  # Hydra's generic page lists internal groups
        print(training_help())
        return 0
    hydra_arguments("python -m ti_experiments")
    try:
        sys.argv = [sys.argv[0], *_sweep_args(_distributed_args(sys.argv[1:]))]
        _task()
        failed = SweepReport.failed_jobs
        if failed:
            print(f"error: {len(failed)} job(s) of the sweep failed: {', '.join(failed)}; fix: see each job's "
                  "run.json and the sweep's report.md", file=sys.stderr)
            return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or the loop's clean stop (errors.Interrupted)
        print(f"error: {exc}" if str(exc) else "error: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)
    except Exception as exc:
        return report_or_raise(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
