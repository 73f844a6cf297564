"""Ctrl-C, SIGTERM and SIGUSR2 (a preempted job) stop a run cleanly at the next optimizer step.

The handler only records the request; the loop checks it after each optimizer step, writes a
checkpoint and the current embedding, and raises `errors.Interrupted`, so a resumed run ends exactly
where an uninterrupted one would have.
"""

from __future__ import annotations

import signal
import threading


class StopRequests:
    """While active (main thread only), SIGINT/SIGTERM/SIGUSR2 set `signum` instead of killing the process;
    a second signal of the same kind while stopping falls back to the default behaviour."""

    # SIGUSR2: the signal SLURM sends before a time limit or a preemption when asked to (sbatch --signal),
    # submitit's; after the clean stop, `slurm.hand_over` passes it on to submitit
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
