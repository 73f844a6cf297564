"""What a run ran on: code version, package versions, hardware. Collected once, at the start."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "hydra-core", "omegaconf", "safetensors",
            "wandb", "ti-experiments")
SOURCE_DIR = Path(__file__).resolve().parents[2]


# a run slowed this many times over by other work on the CPU is worth a warning at its start
BUSY_SLOWDOWN = 3.0
BUSY_SWITCH = "TI_EXPERIMENTS_BUSY_WARNING"  # =0: no warning (a test suite that runs many trainings at once)


def cpu_slowdown(load: float, cores: int, threads: int) -> float:
    """About how many times slower a CPU run with `threads` threads goes than alone, when other processes
    keep `load` cores busy on average (the load average, this run not yet in it): the cores are shared
    in proportion to the threads that want them."""
    threads = max(1, min(threads, cores))
    return max(1.0, (load + threads) / cores)


def busy_machine_warning() -> str | None:
    """A line saying the CPU is busy enough to slow this run several times over; None when it is not,
    when the load cannot be read, or when TI_EXPERIMENTS_BUSY_WARNING=0."""
    if os.environ.get(BUSY_SWITCH, "1") == "0" or not hasattr(os, "getloadavg"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0]
    slowdown = cpu_slowdown(load, cores, torch.get_num_threads())
    if slowdown < BUSY_SLOWDOWN:
        return None
    return (f"the CPU is busy: a load average of {load:.1f} on {cores} cores, so this run may take about "
            f"{slowdown:.0f}x as long as on an idle machine; run one training at a time, or give each fewer "
            "threads (OMP_NUM_THREADS=1), see docs/speed.md")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    """Commit, dirty flag and the diff of uncommitted changes of the code that ran (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff": None, "untracked": None}
    diff = _git("diff", "HEAD") or ""
    untracked = [line for line in (_git("ls-files", "--others", "--exclude-standard") or "").splitlines() if line]
    return {"commit": commit.strip(), "dirty": bool(diff or untracked), "diff": diff, "untracked": untracked}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "memory_bytes": _memory_bytes(), "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_bytes": props.total_memory})
        info["cuda"] = torch.version.cuda
    info["gpu_count"] = len(info["gpus"])
    return info


def command_line() -> list[str]:
    return [sys.executable, *sys.argv]
