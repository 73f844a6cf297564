"""Config composition, in one place for the CLI, the API, every command and the tests.

Where the configs are (`conf/` and `sweeps/`: inside the installed package, or at the top of a source
checkout), how a config is composed outside the command line (`compose`), and how a node becomes its
object (`build`), with Hydra's errors turned into the package's one-line errors.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import hydra_error
from .settings import build  # noqa: F401 - `config.build`: one way to instantiate a node, kept in settings
from ..toyworld import shipped as _toyworld  # noqa: F401 - registers ${ti.toyworld:...} for every config

_PACKAGE = Path(__file__).resolve().parent.parent  # the ti_experiments package


def _data_dir(name: str) -> Path:
    """A wheel carries the folder inside the package; a source checkout (editable install) at its top."""
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


CONF_DIR = _data_dir("conf")
SWEEPS_DIR = _data_dir("sweeps")
CONFIG_NAME = "config"


def options(group: str) -> list[str]:
    """The options of a config group (`concept` -> cat_toy, demo, ...)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides=(), return_hydra_config: bool = False, sweep: str | None = None):
    """The config `python -m ti_experiments OVERRIDES...` composes (with `sweep`: `--config-name SWEEP`, a
    file of sweeps/ over conf/); a Hydra state of the caller's is kept."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    from ..evaluation import settings as _evaluation_settings  # noqa: F401 - registers ${ti.direction:...}

    config_dir, name = (SWEEPS_DIR, sweep) if sweep else (CONF_DIR, CONFIG_NAME)
    overrides = [str(o) for o in overrides] + ([f"hydra.searchpath=[file://{CONF_DIR}]"] if sweep else [])
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="ti"):
            return hydra_compose(name, overrides=overrides, return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as exc:
        raise hydra_error(exc) from None
    finally:
        restore_gh_from_backup(backup)


def hydra_choices() -> dict:
    """The option chosen for each config group (`model` -> `tiny`), when Hydra composed this run; else {}."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v and not k.startswith("hydra")}
