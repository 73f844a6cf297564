"""A run as a SLURM job: who it is, what to do when SLURM runs it again, and how a preemption is handed on.

SLURM takes a job away (preemption, time limit, node failure, `scontrol requeue`) and later runs the
same job again, with the same job id and the same command: under Hydra's submitit launcher that is the
same task function with the same overrides, in the same run directory. Resuming is the run's own job:
`run.json` records the SLURM job id, and a run that finds its own unfinished record in its folder
continues it from the latest checkpoint (or starts over when there is none yet); a finished one is
left as it is.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

# submitit's preemption and time-limit signal (sbatch --signal=USR2@signal_delay_s)
PREEMPTION_SIGNAL = signal.SIGUSR2


def job_identity() -> dict | None:
    """This process's SLURM job (an array task as ARRAYID_TASK, as sacct shows it), how many times SLURM
    requeued it, its node, and submitit's log of it; None outside SLURM."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    array = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array[0]}_{array[1]}" if all(array) else env["SLURM_JOB_ID"]
    identity = {"job_id": job_id, "restarts": int(env.get("SLURM_RESTART_COUNT") or 0),
                "node": env.get("SLURMD_NODENAME")}
    log_file = submitit_log()
    if log_file:
        identity["log"] = log_file
    return identity


def submitit_log() -> str | None:
    """The stderr file submitit writes for this job (tracebacks land there), when submitit runs it."""
    if not os.environ.get("SUBMITIT_FOLDER"):
        return None
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # noqa: BLE001 - a record without the path is still a record
        return None


def own_record(run_dir: Path) -> dict | None:
    """The run record in `run_dir` when an earlier attempt of this same SLURM job wrote it (SLURM runs a
    requeued job again under its id, and counts the restarts), else None. A job's first attempt has none:
    two commands of one batch script into one folder are two runs, and the second is refused."""
    from .records.run_dir import read_record

    me = job_identity()
    if me is None or me["restarts"] < 1:
        return None
    record = read_record(run_dir)
    earlier = record.get("slurm") or {}
    return record if earlier.get("job_id") == me["job_id"] else None


def under_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_FOLDER")) and "SLURM_JOB_ID" in os.environ


def hand_over(signum: int) -> None:
    """After the loop stopped cleanly for a signal (its checkpoint saved), let submitit do what the signal
    asks of it: for its preemption/time-limit signal that is `scontrol requeue` of this job and exit;
    for SIGTERM (scancel, scontrol requeue, the end of the time limit) SLURM itself decides, and this
    process only ends."""
    if not under_submitit():
        return
    if signum == PREEMPTION_SIGNAL and signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        log.info("stopped cleanly for %s; submitit requeues the job", signal.Signals(signum).name)
        signal.raise_signal(signum)  # submitit's handler: requeue, then SystemExit
    raise SystemExit(128 + signum)
