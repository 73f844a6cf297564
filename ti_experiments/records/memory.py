"""Peak memory: the GPU allocator's peak on CUDA, the process's peak resident set on a CPU."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the OS instead of keeping them in the heap.

    glibc raises its mmap threshold each time a large block is freed, so the activations of one step
    end up in a heap that only grows; a fixed 1 MiB threshold keeps the resident set at what is live
    (measured: -0.18 GiB peak on the SD 1.5 UNet at 256 px, same speed). No-op outside glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
