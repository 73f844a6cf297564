"""The Python API: train and generate from a notebook or a script, with the settings of the commands.

    from ti_experiments import train, generate
    result = train("+concept=demo", "model=tiny", "hardware=cpu", "train.max_steps=100")
    images = generate("a photo of a <demo-toy> on a beach", result.run_dir, steps=25, seed=0)

`train` composes the same config as `python -m ti_experiments` (`config.compose`, on the package's
configs), and leaves the process as it found it: no change of directory or `sys.argv`, Hydra's and
Accelerate's process-wide state restored, its log file handler removed, so calls are independent.
User errors raise `TIError`.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .records import run_dir as run_files
from .config import compose
from .errors import TIError
from .models.generation import generate

__all__ = ["RunResult", "compose", "generate", "train"]


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory (the record of the run) and its summary.json."""

    run_dir: Path
    summary: dict

    @property
    def embedding(self) -> Path:
        return self.run_dir / run_files.EMBEDDING


def train(*overrides: str, config: DictConfig | None = None, output_dir: str | os.PathLike | None = None) -> RunResult:
    """Train one concept, like `python -m ti_experiments OVERRIDES...`, or from a config composed before.

    The run directory is `output_dir`, else the command line's default (`outputs/runs/<date>/<time>` under
    the current directory, or under TI_OUTPUT_ROOT). It gets the same files as a run from the command
    line, `.hydra/config.yaml` included, so `python -m ti_experiments.reproduce` works on it.
    """
    from hydra.core.hydra_config import HydraConfig

    from .experiment import reset_accelerate, run

    if config is not None and overrides:
        raise TIError("train() got both overrides and a config", "pass overrides, or one composed config")
    full = compose(overrides, return_hydra_config=True) if config is None else None
    if full is not None:
        run_dir = Path(output_dir or str(full.hydra.run.dir)).expanduser().absolute()
        with _writable(full.hydra):
            full.hydra.runtime.output_dir = str(run_dir)
        task_cfg = copy.deepcopy(full)
        with _writable(task_cfg):
            del task_cfg["hydra"]
    else:
        task_cfg = copy.deepcopy(config)
        with _writable(task_cfg):
            task_cfg.pop("hydra", None)
        given = OmegaConf.select(task_cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
        if output_dir is not None or given is None:  # `${hydra:...}` does not resolve outside the command line
            default = compose([], return_hydra_config=True).hydra.run.dir
            run_dir = Path(output_dir or str(default)).expanduser().absolute()
            with _writable(task_cfg):
                OmegaConf.update(task_cfg, "paths.output_dir", str(run_dir), force_add=True)
        else:
            run_dir = Path(str(given)).expanduser().absolute()

    previous = HydraConfig.instance().cfg
    if full is not None:
        HydraConfig.instance().set_config(full)  # `${hydra:runtime.output_dir}` and the choices, as in the CLI
    with _log_file(run_dir / run_files.LOG):
        try:
            run(task_cfg, overrides=list(overrides))
        finally:
            HydraConfig.instance().cfg = previous
            reset_accelerate()
    return RunResult(run_dir=run_dir, summary=run_files.read_summary(run_dir))


class _writable:
    """Lift read-only and struct flags of one node for a few assignments."""

    def __init__(self, node):
        from omegaconf import open_dict, read_write

        self._contexts = [read_write(node), open_dict(node)]

    def __enter__(self):
        for context in self._contexts:
            context.__enter__()

    def __exit__(self, *exc):
        for context in reversed(self._contexts):
            context.__exit__(*exc)
        return False


class _log_file:
    """The run's `ti.log`, as Hydra's job logging writes it for a command-line run, and the same lines on
    stderr when nothing else shows them (a notebook); both removed afterwards."""

    FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

    def __init__(self, path: Path):
        self.path = path
        self.logger = logging.getLogger("ti_experiments")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handlers = [logging.FileHandler(self.path, encoding="utf-8", delay=True)]
        if not self.logger.handlers and not logging.getLogger().handlers:
            self.handlers.append(logging.StreamHandler())
        for handler in self.handlers:
            handler.setFormatter(logging.Formatter(self.FORMAT))
            self.logger.addHandler(handler)
        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)

    def __exit__(self, *exc):
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.logger.setLevel(self.level)
        return False
