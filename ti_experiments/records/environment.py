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
