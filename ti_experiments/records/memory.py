"""Peak memory (the GPU allocator's peak on CUDA, the process's peak resident set on a CPU), and sizes that
cannot fit in the memory there is."""

from __future__ import annotations

import resource
import sys

import torch

from ..errors import TIError


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB



def available_bytes() -> int:
    """Memory a new allocation can get now (RAM not in use, page cache included)."""
    import psutil

    return int(psutil.virtual_memory().available)


def refuse_beyond_memory(need: int, what: str, fix: str) -> None:
    """`need` is a lower bound of what `what` takes: above the memory there is, refuse before decoding or
    allocating anything (a crash deep in PIL or torch would say less, later)."""
    free = available_bytes()
    if need > free:
        raise TIError(f"{what} needs at least {need / 2**30:.1f} GiB of memory and {free / 2**30:.1f} GiB is free", fix)
