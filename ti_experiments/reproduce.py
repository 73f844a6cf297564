"""`python -m ti_experiments.reproduce RUN_DIR [overrides...]`: run a finished run again, same config.

The run's `.hydra/config.yaml` (the composed config, interpolations kept) becomes the primary config,
so the new run gets the same settings even after conf/ changed; it lands in a new run directory and
records where it came from in `reproduced_from`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

USAGE = "usage: python -m ti_experiments.reproduce RUN_DIR [overrides...]"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    from .errors import TIError, command_arguments, report_or_raise

    try:
        command_arguments(args, USAGE)
    except TIError as exc:
        return report_or_raise(exc)
    run_dir = Path(args[0]).expanduser().resolve()
    from .records.run_dir import COMPOSED_CONFIG

    job_config = run_dir / COMPOSED_CONFIG
    if not job_config.is_file():
        print(f"error: {run_dir} has no {COMPOSED_CONFIG}, so it is not a run directory; fix: pass the "
              "directory of a run (it holds run.json and .hydra/)", file=sys.stderr)
        return 2
    from .__main__ import main as cli_main
    from .config import CONF_DIR, CONFIG_NAME

    hydra = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{CONFIG_NAME}.yaml"), resolve=False)["hydra"]
    sys.argv = [sys.argv[0], "--config-path", str(job_config.parent), "--config-name", "config",
                f"hydra.run.dir={hydra['run']['dir']}", f"hydra.job.name={hydra['job']['name']}",
                f"hydra.output_subdir={hydra['output_subdir'] if hydra['output_subdir'] is not None else 'null'}",
                # a reproduction starts from step 0, even of a run that was itself resumed
                "train.resume_from_checkpoint=null", f"++reproduced_from='{run_dir}'", *args[1:]]
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
