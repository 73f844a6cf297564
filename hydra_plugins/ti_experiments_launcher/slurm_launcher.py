"""`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): Hydra's submitit launcher, each job's end told
honestly, and SLURM's stop signals handled by the job from its start (`ti_experiments.slurm.job_signals`).

Hydra's launcher asks submitit for every job's result in turn, and the first job that SLURM killed
(scancel, out of memory, out of time, a dead node) raises there: the sweep stops with a traceback,
without its report, and the other jobs' results are dropped. Here such a job is recorded as failed
in its run.json (SLURM's reason and the path of its log), the sweep goes on to collect the others,
and the report and the exit code say which jobs failed, as they do for a job that raised.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

try:  # an optional dependency (the `launchers` extra): without it this launcher is not offered
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurm
except ImportError:  # pragma: no cover - the extra is installed with the tests
    _SubmititSlurm = None

log = logging.getLogger(__name__)

if _SubmititSlurm is not None:

    class SlurmLauncher(_SubmititSlurm):
        """One SLURM job per sweep point (an array); a job SLURM ended early is a failed job, not an error."""

        def __call__(self, *args, **kwargs):
            """The job itself, on its node: SLURM's stop signals are the job's own from here on (submitit's
            handler would ignore SIGTERM until the training steps begin)."""
            from ti_experiments import slurm

            with slurm.job_signals():
                return super().__call__(*args, **kwargs)

        def launch(self, job_overrides, initial_job_idx: int):
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
            calls = []
            for num, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
                calls.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
            jobs = self._executor().map_array(self, *zip(*calls))
            return [self._result(job, call[0], call[2]) for job, call in zip(jobs, calls)]

        def _executor(self):
            """submitit's executor with this launcher's settings (as Hydra's launcher makes it)."""
            import submitit

            params = dict(self.params)
            init = {"folder": params.pop("submitit_folder")}
            if "max_num_timeout" in params:
                init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
            executor = submitit.AutoExecutor(cluster="slurm", **init)
            common = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in common else f"slurm_{k}": v for k, v in params.items()})
            return executor

        def _result(self, job, overrides: list[str], num: int) -> JobReturn:
            """The job's own return, or, when SLURM ended it before it returned, its failure recorded in its
            run directory; the value a searching sweeper gets is then the worst one, as for a job that raised."""
            from ti_experiments.evaluation import worst
            from ti_experiments.experiment import objective
            from ti_experiments.records.run_record import record_failure

            try:
                return job.results()[0]
            except Exception as exc:  # noqa: BLE001 - submitit's UncompletedJobError / FailedJobError
                key = str(self.config.objective)
                run_dir = self._run_dir(overrides, num)
                cause = _cause(exc, Path(job.paths.stderr))
                reason = f"SLURM job {job.job_id} ended {job.state}" + (f": {cause}" if cause else "")
                if record_failure(run_dir, reason, log=str(job.paths.stderr), overrides=overrides):
                    log.error("job #%d failed: %s (log: %s)", num, reason, job.paths.stderr)
                    value = worst(key)
                else:  # the run had completed before SLURM ended the job: its result stands
                    value = objective(run_dir, key)
                return JobReturn(overrides=overrides, working_dir=str(run_dir),
                                 task_name=str(self.config.hydra.job.name), status=JobStatus.COMPLETED,
                                 _return_value=value)

        def _run_dir(self, overrides: list[str], num: int) -> Path:
            """The job's run directory, as the job itself names it (hydra.sweep.dir / hydra.sweep.subdir)."""
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config.hydra.job):
                config.hydra.job.num = num
            return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def _cause(exc: BaseException, log_file: Path) -> str:
    """Why the job ended, beyond SLURM's state: the last line of its traceback when its process raised
    (submitit's FailedJobError), else SLURM's own last word in the job's log (e.g. "Exceeded job memory
    limit": without cgroups an over-memory job ends FAILED, not OUT_OF_MEMORY)."""
    import submitit

    if isinstance(exc, submitit.core.utils.FailedJobError):
        trace = str(exc).split("-" * 22)
        lines = [line.strip() for line in (trace[1] if len(trace) > 2 else str(exc)).splitlines() if line.strip()]
        return lines[-1] if lines else ""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    said = [line.split("error:", 1)[1].strip() for line in text.splitlines()
            if line.startswith("slurmstepd") and "error:" in line and "***" not in line]
    return said[-1] if said else ""
