"""Memory a training step does not need.

Only the placeholder rows are trained, so the frozen UNet must pass gradients to its inputs but never
to its own weights. Autograd still keeps, per convolution, the input it would need for the weight's
gradient, and GEGLU keeps its gate's activation next to the projection it can recompute it from.
`lean_backward` swaps in versions that keep only what the input gradient needs: the same kernels run
in the backward, so the gradients are bit-identical (tested), with about 0.57 GiB fewer saved
activations for SD 1.5 at 512 px; small UNets (under 256 MiB of weights: the toy world's, the tiny ones)
keep autograd's layers, which run forward and backward about 10% faster there.
`return_free_heap` gives freed pages back to the system (glibc keeps
them otherwise): once the VAE is gone, and on a CPU after each UNet block (`trim_heap_between_blocks`):
a block's temporaries are freed in holes between the activations it keeps, so the heap only grew
through the forward pass; trimmed there, SDXL at 512 px peaks 0.5 GiB lower (SD 1.5: 0.04 GiB at 256 px,
0.21 at 512), at no step time we could measure (after whole steps instead it cost 6-12%); UNets under 1 GiB
(the toy world, the tiny models) are not trimmed: about 1 ms a trim, 4% of a toy-world step. On a CPU,
`map_frozen_rows` keeps the frozen vocabulary matrix in a file instead of memory: the prompts read a
few hundred of its 49k rows, and only those pages are ever loaded; `park_in_file` does the same for the
VAE encoder between the few steps that encode an image, so it is not resident while the UNet trains.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import mmap
import os
import tempfile
import warnings

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _no_autocast(tensor):
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class _ConvInputGrad(torch.autograd.Function):
    """conv2d that saves its weight only: enough for the input's gradient, not the weight's."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.conv = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conv
        # the input only lends its shape: a zero-stride stand-in costs no memory
        stand_in = grad.new_empty(()).expand(shape)
        with _no_autocast(grad):  # the forward's dtypes, as autograd's own backward kernels use
            grad_input, _, _ = torch.ops.aten.convolution_backward(
                grad, stand_in, weight.to(grad.dtype), None, stride, padding, dilation, False, [0, 0], groups,
                [True, False, False])
        return grad_input, None, None, None, None, None, None


class LeanConv2d(nn.Conv2d):
    """A frozen Conv2d whose backward keeps no activation (its weight must not need a gradient)."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros" or not torch.is_grad_enabled() or weight.requires_grad:
            return super()._conv_forward(input, weight, bias)
        return _ConvInputGrad.apply(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class _Geglu(torch.autograd.Function):
    """value * gelu(gate) from one projection, saving the projection alone; gelu(gate) is recomputed."""

    @staticmethod
    def forward(ctx, projected):
        ctx.save_for_backward(projected)
        value, gate = projected.chunk(2, dim=-1)
        return value * F.gelu(gate)

    @staticmethod
    def backward(ctx, grad):
        (projected,) = ctx.saved_tensors
        return _geglu_grad(grad, projected)


def _geglu_grad(grad, projected):
    value, gate = projected.chunk(2, dim=-1)
    with _no_autocast(grad):
        grad_value = grad * F.gelu(gate)
        grad_gate = torch.ops.aten.gelu_backward(grad * value, gate)
        return torch.cat([grad_value, grad_gate], dim=-1)


class _RecomputedGeglu(torch.autograd.Function):
    """The projection and GEGLU together, saving only the (4x narrower) input: the backward recomputes
    the projection, under the forward's autocast settings, so it is the same tensor."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        device = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, weight, bias)
        value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
        return value * F.gelu(gate)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=enabled):
            projected = F.linear(x, weight, bias)
        grad_projected = _geglu_grad(grad, projected)
        with _no_autocast(grad):
            return grad_projected @ weight.to(grad_projected.dtype), None, None


@functools.cache
def _geglu_class():
    """One LeanGEGLU class per process (built lazily: diffusers is imported on first use)."""
    from diffusers.models.activations import GEGLU

    class LeanGEGLU(GEGLU):
        """diffusers' GEGLU whose backward keeps the projection only (or, with `recompute`, its input)."""

        recompute = False

        def forward(self, hidden_states, *args, **kwargs):
            if not torch.is_grad_enabled() or self.proj.weight.requires_grad:
                return super().forward(hidden_states, *args, **kwargs)
            if self.recompute:
                return _RecomputedGeglu.apply(hidden_states, self.proj.weight, self.proj.bias)
            return _Geglu.apply(self.proj(hidden_states))

    return GEGLU, LeanGEGLU


LEAN_FROM_BYTES = 2**28  # smaller UNets (the toy world's, the tiny ones) save a few MB, and step ~10% slower lean


def lean_backward(module: nn.Module, recompute_widest: bool = True, from_bytes: int = LEAN_FROM_BYTES) -> int:
    """Swap the frozen module's convolutions and GEGLUs for lean ones in place (same parameters and
    state dict), if its weights take `from_bytes` or more; returns how many were swapped. Layers whose
    weights need gradients keep autograd's way.

    `recompute_widest`: the GEGLUs of the highest-resolution blocks (the fewest channels, the most
    tokens) keep their input instead of their projection. Recomputing a projection costs the same at
    every level, but there it frees the most memory: SD 1.5 at 512 px, 0.18 GiB for ~2% of the step.
    """
    if sum(p.nbytes for p in module.parameters()) < from_bytes:
        return 0
    geglu, lean_geglu = _geglu_class()
    swapped, geglus = 0, []
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = LeanConv2d
        elif type(m) is geglu:
            m.__class__ = lean_geglu
            geglus.append(m)
        else:
            continue
        swapped += 1
    if recompute_widest and geglus:
        narrowest = min(m.proj.in_features for m in geglus)
        for m in geglus:
            m.recompute = m.proj.in_features == narrowest
    return swapped


def plain_backward(module: nn.Module) -> None:
    """Undo `lean_backward` and `trim_heap_between_blocks`: autograd's own layers and no trims again (the
    benchmark's diffusers-example step)."""
    for handle in getattr(module, "_heap_trims", ()):
        handle.remove()
    module._heap_trims = []
    geglu, lean_geglu = _geglu_class()
    for m in module.modules():
        if isinstance(m, LeanConv2d):
            m.__class__ = nn.Conv2d
        elif type(m) is lean_geglu:
            m.__class__ = geglu


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def return_free_heap() -> None:
    """Give glibc's free heap pages back to the system (a no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


TRIM_FROM_BYTES = 2**30  # smaller UNets (the toy world's, the tiny ones) free too little for ~1 ms a trim


def trim_heap_between_blocks(unet: nn.Module, from_bytes: int = TRIM_FROM_BYTES) -> int:
    """Return the free heap to the system after each down, mid and up block of a UNet's forward pass (CPU
    training: see the module's docstring), for UNets whose weights take `from_bytes` or more; returns how
    many blocks trim. Idempotent."""
    for handle in getattr(unet, "_heap_trims", []):
        handle.remove()
    unet._heap_trims = []
    if sum(p.nbytes for p in unet.parameters()) < from_bytes:
        return 0
    blocks = [*getattr(unet, "down_blocks", ()), getattr(unet, "mid_block", None), *getattr(unet, "up_blocks", ())]
    unet._heap_trims = [b.register_forward_hook(lambda *_: return_free_heap()) for b in blocks if b is not None]
    return len(unet._heap_trims)


def map_frozen_rows(embedding, directory: str | os.PathLike) -> bool:
    """Move a PlaceholderEmbedding's frozen matrix (CPU) into a file (`park_in_file`): rows are read from
    disk when a prompt first uses them, writes (merging the learned rows for validation) stay private,
    and the file is gone when the process ends. Returns False, keeping the matrix in memory, where the
    file cannot be written."""
    if embedding.base.weight.device.type != "cpu":
        return False
    embedding.base.requires_grad_(False)
    return park_in_file(embedding.base, directory) is not None


def park_in_file(module: nn.Module, directory: str | os.PathLike):
    """Move a frozen CPU module's parameters and buffers into one unnamed temporary file in `directory`,
    mapped copy-on-write. Returns `release`, which drops the pages read so far from this process (the
    page cache keeps them, so the next use reads them back without the disk); None, keeping the module
    in memory, where the file cannot be written."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.device.type == "cpu"]
    if not tensors or any(t.requires_grad for t in tensors):
        return None
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".parked-") as f:
            offsets, offset = [], 0
            for t in tensors:
                data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data
                offset += (-offset) % 64  # every tensor aligned for its kernels
                f.seek(offset)
                f.write(data)
                offsets.append(offset)
                offset += t.nbytes
            f.truncate(max(offset, 1))
            f.flush()
            mapped = mmap.mmap(f.fileno(), max(offset, 1), flags=mmap.MAP_PRIVATE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        log.debug("%s stays in memory: %s", type(module).__name__, exc)
        return None
    with warnings.catch_warnings():  # frombuffer warns about writable buffers; the weights are frozen
        warnings.simplefilter("ignore", UserWarning)
        for t, start in zip(tensors, offsets):
            t.data = torch.frombuffer(mapped, dtype=t.dtype, count=t.numel(), offset=start).view(t.shape)

    def release() -> None:
        mapped.madvise(mmap.MADV_DONTNEED)
    release()
    return release
