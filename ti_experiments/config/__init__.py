"""Config composition, in one place for the CLI, the API, every command and the tests.

Where the configs are (`conf/` and `sweeps/`: inside the installed package, or at the top of a source
checkout), how a config is composed outside the command line (`compose`), and how a node becomes its
object (`build`), with Hydra's errors turned into the package's one-line errors.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TIError, hydra_error
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


# --- configs read back from disk: data, never code ---------------------------------------------------------

# resolvers that turn a string into a config node (and so could make a `_target_` the check never saw)
_NODE_MAKERS = ("oc.create", "oc.decode")


def project_targets() -> frozenset[str]:
    """The `_target_`s the project's own configs name (conf/ and sweeps/): what a config read back from a
    run folder may build."""
    import yaml

    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            target = value.get("_target_")
            if isinstance(target, str):
                found.add(target)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for folder in (CONF_DIR, SWEEPS_DIR):
        for path in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            try:
                walk(yaml.safe_load(path.read_text(encoding="utf-8")))
            except (OSError, yaml.YAMLError):
                continue
    return frozenset(found)


def _torch_optim_class(target: str) -> bool:
    """An optimizer or LR schedule class of torch.optim (a user's `optimizer._target_=torch.optim.RAdam`),
    found by attribute lookup alone: nothing is imported for it."""
    import torch

    if not target.startswith("torch.optim."):
        return False
    obj = torch.optim
    for name in target.split(".")[2:]:
        obj = getattr(obj, name, None)
        if obj is None or name.startswith("_"):
            return False
    bases = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
    return isinstance(obj, type) and issubclass(obj, bases) and obj not in bases


def check_targets(node, where) -> None:
    """Refuse a config read from disk that names code the project does not ship: every `_target_`, nested
    ones and those in `_args_` included, must be one of the project's own (or a torch.optim class), as a
    plain string (an interpolation could name anything). Hydra 1.4's way: an allow-list, not a blocklist."""
    from omegaconf import OmegaConf

    allowed = project_targets()
    fix = (f"use a run folder this project wrote, or edit {where} so every _target_ is one of the project's "
           f"(e.g. {sorted(allowed)[0] if allowed else 'torch.optim.AdamW'})")

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                here = f"{key}.{name}" if key else str(name)
                if name == "_target_" and not (isinstance(item, str) and (item in allowed or _torch_optim_class(item))):
                    raise TIError(f"{where} names {here}={item!r}, which is not one of the project's targets "
                                  "(a config read from a folder builds only those)", fix)
                walk(item, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{key}[{i}]")
        elif isinstance(value, str) and any(f"{maker}:" in value.replace(" ", "") for maker in _NODE_MAKERS):
            raise TIError(f"{where} makes a config node from text at {key} ({value[:60]!r}), which could name "
                          "any code", fix)

    walk(OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node, "")


def load_yaml_config(path, what: str = "config"):
    """A YAML config from disk (a run folder's) as a DictConfig whose targets are all the project's; a file
    that YAML cannot read, or that is no mapping, is one line naming it."""
    from omegaconf import DictConfig, OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - yaml's, OmegaConf's and OSError: all mean the file is broken
        detail = " ".join(str(exc).split())[:120]
        raise TIError(f"{path} is not a readable {what} ({type(exc).__name__}: {detail})",
                      "restore the file from a copy of the run, or pass the directory of another run") from None
    if not isinstance(cfg, DictConfig):
        raise TIError(f"{path} is not a {what} (it holds a {type(cfg).__name__}, not a mapping)",
                      "restore the file from a copy of the run, or pass the directory of another run")
    check_targets(cfg, path)
    return cfg
