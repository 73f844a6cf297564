"""A run as a SLURM job: who it is, what to do when SLURM runs it again, and how a preemption is handed on.

SLURM takes a job away (preemption, time limit, node failure, `scontrol requeue`) and later runs the
same job again, with the same job id and the same command: under Hydra's submitit launcher that is the
same task function with the same overrides, in the same run directory. Resuming is the run's own job:
`run.json` records the SLURM job id, and a run that finds its own unfinished record in its folder
continues it from the latest checkpoint (or starts over when there is none yet); a finished one is
left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from .errors import Interrupted

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


# what SLURM sends to stop a job: SIGTERM (scontrol requeue, scancel, preemption, the end of its time limit)
# and submitit's preemption/time-limit signal
STOP_SIGNALS = (signal.SIGTERM, PREEMPTION_SIGNAL)


@contextlib.contextmanager
def job_signals():
    """SLURM's stop signals, handled by the job from its entry (the launcher runs each job inside this).

    submitit's own handler ignores SIGTERM: a job stopped while it loads its model would run on until
    SLURM kills it (KillWait later), often mid-training, and resume from an older checkpoint. Here a stop
    outside the training steps ends the job at once (there is no step to save: `Interrupted`, which
    run.json records); inside them the loop's own handler (`training.signals.StopRequests`, installed over
    this one) stops at the next step with a checkpoint. Either way the stop is then handed on
    (`hand_over`)."""
    _stopping.clear()
    previous = {sig: signal.signal(sig, _stop_at_once) for sig in STOP_SIGNALS}
    try:
        yield
    except KeyboardInterrupt as exc:
        _restore(previous)
        hand_over(getattr(exc, "signum", signal.SIGINT))
        raise
    finally:
        _restore(previous)
        _stopping.clear()


_stopping: list[int] = []  # the signal this job stops for: later ones are ignored while that stop ends it


def _stop_at_once(signum: int, frame) -> None:
    if _stopping:
        log.warning("%s while stopping for %s: ignored", signal.Signals(signum).name,
                    signal.Signals(_stopping[0]).name)
        return
    _stopping.append(signum)
    raise _outside_steps(signum)


def _outside_steps(signum: int) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(f"stopped by {name} outside the training steps (starting or finishing): no step to save",
                       signum)


def stop_behind(exc: BaseException) -> BaseException:
    """The error a run ends with, or the stop behind it. The handler raises `Interrupted` wherever the job
    is when the signal comes, and a library may catch and wrap it (diffusers' lazy imports turn any error
    into a RuntimeError; Python 3.11 wraps one raised while a class is made): recorded as it arrives, a
    stop would be a failure, and submitit would not requeue the job."""
    if not _stopping or isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return exc
    return _outside_steps(_stopping[0])


def _restore(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def hand_over(signum: int) -> None:
    """After the job stopped cleanly for a signal (in the steps: its checkpoint saved), let submitit do what
    the signal asks of it: for its preemption/time-limit signal that is `scontrol requeue` of this job and
    exit; for SIGTERM (scancel, scontrol requeue, the end of the time limit) SLURM itself decides, and this
    process only ends."""
    if not under_submitit():
        return
    if signum == PREEMPTION_SIGNAL and signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        log.info("stopped cleanly for %s; submitit requeues the job", signal.Signals(signum).name)
        signal.raise_signal(signum)  # submitit's handler: requeue, then SystemExit
    raise SystemExit(128 + signum)
