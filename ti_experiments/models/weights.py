"""A model's weights read into memory with plain reads instead of a file mapping.

diffusers maps safetensors files into memory and hands out tensors that live in the mapping. For a
frozen UNet that is then converted to channels-last, every converted weight is copied while the
mapped pages it was read from stay resident (the mapping is one storage, kept alive by every other
weight): SD 1.5's UNet then costs 5.8 GiB of resident memory instead of 3.2. Read into the process's
own memory, each weight exists once, the file's pages stay in the page cache (which the kernel can
drop), and converting a weight frees the old copy at once.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

# safetensors' dtype names
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file, each in its own memory, read in file order."""
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        start = 8 + header_size
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = DTYPES[info["dtype"]]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(start + begin)
            view = memoryview(raw.numpy())
            done = 0
            while done < len(view):  # readinto may return less than asked
                got = f.readinto(view[done:])
                if not got:
                    raise OSError(f"{path} ends inside tensor {name!r}")
                done += got
            tensors[name] = raw.view(dtype).reshape(info["shape"]) if end > begin else \
                torch.empty(info["shape"], dtype=dtype)
    return tensors


def weight_files(folder: Path, stem: str, variant: str | None) -> list[Path] | None:
    """The safetensors file(s) of a diffusers model folder (one file or an index of shards), or None."""
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    return None


def load_unet(folder: str | Path, variant: str | None = None, dtype: torch.dtype = torch.float32):
    """The UNet of a local diffusers folder, its weights read (not mapped) into memory, floating-point
    weights in `dtype` (fp32, as diffusers loads them without a torch_dtype, whatever the file holds);
    None when the folder has no safetensors weights or they do not fit the config exactly (the caller
    then uses diffusers' own loading)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    unet_dir = Path(folder) / "unet"
    files = weight_files(unet_dir, "diffusion_pytorch_model", variant)
    if files is None:
        return None
    config = UNet2DConditionModel.load_config(unet_dir)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        for name, tensor in read_safetensors(path).items():  # one tensor at a time: a cast's copy is brief
            state[name] = tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor
    expected = set(unet.state_dict())
    if set(state) != expected:
        return None
    unet.load_state_dict(state, assign=True, strict=True)
    del state
    if any(t.is_meta for t in (*unet.parameters(), *unet.buffers())):
        return None
    return unet.eval()
