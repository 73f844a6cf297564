"""`python -m ti_experiments_dev.pretrain [stage=...] [max_minutes=N]`: pretrain the toy world's model and judge.

Stages run in order (vae, generator, judge) and each resumes from its last checkpoint in work_dir, so
the few CPU hours it takes can be spread over many calls; `export` then writes the finished weights in
diffusers' layout into the package, with their sha256 and the recipe. A fresh clone never needs this:
the weights are committed.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ti_experiments.errors import TIError, hydra_arguments

CONF_DIR = Path(__file__).resolve().parent / "conf"

log = logging.getLogger("ti_experiments_dev.pretrain")

STAGES = ("vae", "generator", "judge", "classifier", "export")


def pretrain(cfg: DictConfig) -> Path:
    from ti_experiments.toyworld import shipped

    if str(cfg.stage) not in ("all",) + STAGES:
        raise TIError(f"stage={cfg.stage!r} is not a stage", f"use stage=all or one of {', '.join(STAGES)}")
    torch.set_num_threads(int(cfg.threads))
    torch.set_flush_denormal(True)  # tiny AdamW moments turn denormal and slow the CPU down tenfold
    work = Path(str(cfg.work_dir)).expanduser()
    ship = Path(str(cfg.ship_dir)).expanduser() if cfg.ship_dir else shipped.WEIGHTS_DIR
    deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * float(cfg.max_minutes)
    stages = STAGES if cfg.stage == "all" else (cfg.stage,)
    from .toyworld import build

    for stage in stages:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            log.info("max_minutes reached before stage %s; run the same command again to continue", stage)
            break
        if stage == "export":
            if not build.ready(work, cfg):
                log.info("not exporting: a stage is unfinished; run the same command again to continue")
                break
            build.export(work, ship, OmegaConf.to_container(cfg, resolve=True))
            log.info("wrote the toy world's weights into %s", ship)
        elif not getattr(build, f"train_{stage}")(work, cfg, left):
            log.info("stage %s stopped at its time budget; run the same command again to continue", stage)
            break
    return work


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pretrain")
def _main(cfg: DictConfig) -> None:
    try:
        pretrain(cfg)
    except TIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    hydra_arguments("python -m ti_experiments_dev.pretrain")
    _main()
