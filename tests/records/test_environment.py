"""The busy-CPU warning: said when other work would slow a run several times over, and only then."""

from __future__ import annotations

import os

from ti_experiments.records import environment
from ti_experiments.records.environment import busy_machine_warning, cpu_slowdown


def test_the_slowdown_counts_other_work_against_the_cores():
    assert cpu_slowdown(load=0.1, cores=2, threads=2) < 1.1  # idle
    assert cpu_slowdown(load=1.0, cores=8, threads=4) == 1.0  # room for both
    assert cpu_slowdown(load=10.0, cores=2, threads=2) == 6.0  # 12 threads want 2 cores
    assert cpu_slowdown(load=4.0, cores=2, threads=8) == 3.0  # a run's threads count up to the cores


def test_the_warning_says_how_busy_and_what_to_do(monkeypatch):
    monkeypatch.setenv(environment.BUSY_SWITCH, "1")
    monkeypatch.setattr(os, "getloadavg", lambda: (11.0, 7.0, 3.5))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    line = busy_machine_warning()
    assert line.startswith("the CPU is busy: a load average of 11.0 on 2 cores") and "one training at a time" in line
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert busy_machine_warning() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (11.0, 7.0, 3.5))
    monkeypatch.setenv(environment.BUSY_SWITCH, "0")  # the test suite's own choice
    assert busy_machine_warning() is None
