"""`python -m ti_experiments ...`: compose the config, run, and turn every user error into one line."""

from __future__ import annotations

import os
import sys

# Let Hydra's own errors reach main() instead of being printed over several lines by Hydra;
# a user who sets HYDRA_FULL_ERROR still gets the full traceback.
_USER_WANTS_TRACEBACK = bool(os.environ.get("HYDRA_FULL_ERROR"))
os.environ["HYDRA_FULL_ERROR"] = "1"

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from .errors import TIError  # noqa: E402
from .experiment import CONF_DIR  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .experiment import run

    try:
        run(cfg)
    except TIError as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        _report(exc)  # here, before Hydra adds its own "Error executing job" line
        sys.exit(2)


def _report(exc: TIError) -> None:
    print(f"error: {exc}", file=sys.stderr)


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf messages span lines ('Available options: ...'); fold them into one."""
    pieces = []
    for source in (exc, exc.__cause__):
        if source is None:
            continue
        for line in str(source).splitlines():
            line = line.strip()
            if line and line not in pieces:
                pieces.append(line)
    text = " ".join(p if p.endswith((":", ".")) else p + ";" for p in pieces).rstrip(";")
    return text.replace(": ;", ":")


def _hydra_hint(text: str) -> str:
    if "Missing mandatory value" in text:
        return "set it on the command line, e.g. concept.train_data_dir=/path/to/images"
    if "not in struct" in text or "Could not override" in text:
        return "check the key's spelling; list every key with: python -m ti_experiments --cfg job"
    if "Could not find" in text or "Available options" in text:
        return "pick one of the available options"
    return "see the README's configuration section"


def main() -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        _task()
    except TIError as exc:
        _report(exc)
        return 2
    except (HydraException, OmegaConfBaseException) as exc:
        if _USER_WANTS_TRACEBACK:
            raise
        text = one_line(exc)
        print(f"error: {text}; fix: {_hydra_hint(text)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
