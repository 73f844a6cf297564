"""`python -m ti_experiments.reproduce RUN_DIR [--accept-changed-inputs] [overrides...]`: run a finished
run again, same config.

The run's `.hydra/config.yaml` (the composed config, interpolations kept) becomes the primary config,
so the new run gets the same settings even after conf/ changed; it lands in a new run directory and
records where it came from in `reproduced_from`. The folder may come from anyone: its config is read as
data (only the project's own `_target_`s, no `hydra` or `defaults` of its own) and composed from a copy
this process wrote. An input whose sha256 the run recorded (`concept.init_from`) must be unchanged, or
the reproduction would silently differ; `--accept-changed-inputs` accepts it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

USAGE = "usage: python -m ti_experiments.reproduce RUN_DIR [--accept-changed-inputs] [overrides...]"
EXAMPLES = (
    ("python -m ti_experiments.reproduce outputs/runs/DATE/TIME", "the same run again, in a new run directory"),
    ("python -m ti_experiments.reproduce outputs/runs/DATE/TIME seed=1", "the same settings with another seed"),
    ("python -m ti_experiments.reproduce outputs/runs/DATE/TIME hydra.run.dir=outputs/runs/again", ""),
)
ACCEPT = "--accept-changed-inputs"


def check_inputs(run_dir: Path, overrides: list[str]) -> None:
    """The recorded init_from file is the same file today (unless an override names another)."""
    from .errors import TIError
    from .records.run_record import sha256
    from .records.run_dir import read_record

    init = read_record(run_dir).get("init_from") or {}
    if not isinstance(init, dict) or not init.get("sha256") or any(o.startswith("concept.init_from=")
                                                                   for o in overrides):
        return
    path = Path(str(init.get("path")))
    now = sha256(path) if path.is_file() else None
    if now != init["sha256"]:
        what = "no longer exists" if now is None else "has changed since the run (its sha256 differs)"
        raise TIError(f"concept.init_from {path} {what}, so the reproduction would not start where the run did",
                      f"restore that file, or accept the difference: python -m ti_experiments.reproduce {run_dir} "
                      f"{ACCEPT}")


def checked_config(run_dir: Path):
    """The run's composed config, read as data."""
    from .errors import TIError
    from .records.run_dir import COMPOSED_CONFIG, read_config

    if not (run_dir / COMPOSED_CONFIG).is_file():
        raise TIError(f"{run_dir} has no {COMPOSED_CONFIG}, so it is not a run directory",
                      "pass the directory of a run (it holds run.json and .hydra/)")
    cfg = read_config(run_dir, composed=True)
    own = [key for key in ("hydra", "defaults") if key in cfg]
    if own:
        raise TIError(f"{run_dir / COMPOSED_CONFIG} sets {own[0]}, which a run's config never holds (it would "
                      "change what Hydra does)", "use a run folder this project wrote, or remove that key")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        from .cli_help import page

        print(page(USAGE, "ti_experiments.reproduce", EXAMPLES, __doc__.split("\n\n", 1)[1]))
        return 0
    from .errors import TIError, command_arguments, report_or_raise

    accept = ACCEPT in args
    args = [a for a in args if a != ACCEPT]
    try:
        command_arguments(args, USAGE)
        run_dir = Path(args[0]).expanduser().resolve()
        cfg = checked_config(run_dir)
        if not accept:
            check_inputs(run_dir, args[1:])
    except TIError as exc:
        return report_or_raise(exc)
    from .__main__ import main as cli_main
    from .config import CONF_DIR, CONFIG_NAME

    hydra = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{CONFIG_NAME}.yaml"), resolve=False)["hydra"]
    with tempfile.TemporaryDirectory(prefix="ti-reproduce-") as copy:
        (Path(copy) / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
        sys.argv = [sys.argv[0], "--config-path", copy, "--config-name", "config",
                    f"hydra.run.dir={hydra['run']['dir']}", f"hydra.job.name={hydra['job']['name']}",
                    f"hydra.output_subdir={hydra['output_subdir'] if hydra['output_subdir'] is not None else 'null'}",
                    # a reproduction starts from step 0, even of a run that was itself resumed
                    "train.resume_from_checkpoint=null", f"++reproduced_from='{run_dir}'", *args[1:]]
        return cli_main()


if __name__ == "__main__":
    sys.exit(main())
