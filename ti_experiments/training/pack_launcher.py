"""`hydra/launcher=packed`: the jobs of a sweep that share model, images and hardware train in one process.

`plan` groups a sweep's jobs into packs and says how; `run_pack` runs one pack with
`training.packed.Pack`: each job goes through Hydra's own `run_job` and this project's task, so its
run directory, records, tracker and exit status are those of a job launched alone. The launcher class
Hydra finds lives in `hydra_plugins/ti_experiments_launcher/` and only calls `launch`.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# What the jobs of one pack must share: one model, one set of images (one latent cache), one device setup.
# Everything else (optimizer, schedule, num_vectors, initializer, seed, max_steps, validation, logger...)
# is each job's own.
SHARED_KEYS = ("model", "data", "hardware", "concept.train_data_dir", "concept.source")


def pack_key(cfg: DictConfig) -> str:
    """Jobs with the same key can share a pack. fp16 jobs never share: their loss scaler is per job."""
    shared = {}
    for key in SHARED_KEYS:
        node = OmegaConf.select(cfg, key)
        shared[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if shared["hardware"].get("mixed_precision") == "fp16":
        shared["alone"] = int(cfg.hydra.job.num)
    return json.dumps(shared, sort_keys=True, default=str)


def plan(configs: list[DictConfig], max_jobs: int) -> list[list[int]]:
    """Packs of job indices, in the order jobs were given: equal keys together, at most `max_jobs` each."""
    if max_jobs < 1:
        from ..errors import TIError

        raise TIError(f"hydra.launcher.max_jobs={max_jobs} is below 1", "use e.g. hydra.launcher.max_jobs=4")
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(pack_key(cfg), []).append(i)
    return [g[i:i + max_jobs] for g in groups.values() for i in range(0, len(g), max_jobs)]


def describe_plan(packs: list[list[int]], configs: list[DictConfig]) -> str:
    nums = [[int(configs[i].hydra.job.num) for i in p] for p in packs]
    shown = "; ".join(f"pack {n}: jobs {', '.join(f'#{j}' for j in p)}" for n, p in enumerate(nums))
    return f"packed {len(configs)} jobs into {len(packs)} pack{'s' if len(packs) != 1 else ''} ({shown})"


def launch(hydra_context, task_function, config: DictConfig, job_overrides, initial_job_idx: int,
           max_jobs: int) -> list:
    """What Hydra's launcher does, per pack instead of per job."""
    from hydra.core.utils import configure_log, filter_overrides, setup_globals

    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        configs.append(cfg)
    packs = plan(configs, max_jobs)
    log.info(describe_plan(packs, configs))
    returns: list = [None] * len(configs)
    for n, members in enumerate(packs):
        for i, ret in zip(members, run_pack([configs[i] for i in members], hydra_context, task_function,
                                            name=f"pack {n} of {sweep_dir}")):
            returns[i] = ret
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return returns


def run_pack(configs: list[DictConfig], hydra_context, task_function, name: str) -> list:
    """Every job of one pack through Hydra's `run_job`, together (`training.packed.Pack`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobStatus, run_job

    from ..experiment import reset_accelerate
    from .packed import Pack

    pack = Pack([_job_dir(c).name for c in configs], name)

    def job(cfg: DictConfig):
        def call():
            with _job_log(cfg):
                return run_job(hydra_context=hydra_context, task_function=task_function, config=cfg,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                               configure_logging=False)
        return call

    def before_turn(i: int) -> None:
        HydraConfig.instance().set_config(configs[i])

    console = logging.Formatter(_job_format(configs[0]))  # the jobs' console lines look as when run alone
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(console)
    try:
        results = pack.run([job(c) for c in configs], before_turn)
    finally:
        reset_accelerate()
    stopped = [r for r in results if isinstance(r, KeyboardInterrupt)]
    if stopped:  # as a sequential sweep: a stop request ends the sweep (every job of the pack checkpointed)
        from ..errors import Interrupted

        sweep = Path(str(configs[0].hydra.sweep.dir))
        raise Interrupted(f"stopped: {len(stopped)} job(s) of {name} saved a checkpoint and their embedding; fix: "
                          f"resume the sweep with the same command and hydra.sweep.dir={sweep} "
                          "train.resume_from_checkpoint=latest", getattr(stopped[0], "signum", 15))
    returns = []
    for result in results:
        if not isinstance(result, JobReturn):  # raised outside the task (run_job itself)
            ret = JobReturn()
            ret.status, ret.return_value = JobStatus.FAILED, result
            result = ret
        returns.append(result)
    return returns


def _job_dir(cfg: DictConfig) -> Path:
    """The job's folder, as `run_job` will make it (sweep dir / subdir, resolved for this job)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def _job_format(cfg: DictConfig) -> str:
    found = OmegaConf.select(cfg, "hydra.job_logging.formatters.simple.format")
    return str(found or "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


class _job_log:
    """The job's own log file (hydra.job_logging's file, e.g. ti.log), fed only by the job's thread: a
    pack's jobs run in one process, each line goes to the run it belongs to."""

    def __init__(self, cfg: DictConfig):
        self.path = _job_dir(cfg) / f"{cfg.hydra.job.name}.log"
        self.format = _job_format(cfg)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from ..records.files import NoFollowFileHandler

        self.handler = NoFollowFileHandler(self.path, mode="a")
        self.handler.setFormatter(logging.Formatter(self.format))
        ident = threading.get_ident()
        self.handler.addFilter(lambda record: record.thread == ident)
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        return False
