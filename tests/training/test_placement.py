"""Model placement: one place decides dtype and layout, and process-wide switches are put back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ti_experiments.models.sd import StableDiffusion
from ti_experiments.models.sdxl import StableDiffusionXL
from ti_experiments.training.placement import Placement, process_settings, weight_dtype_for
from ti_experiments.training.settings import HardwareSettings


@pytest.fixture
def tf32_off():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_is_on_for_the_run_and_restored_after_it(tf32_off):
    on = HardwareSettings(allow_tf32=True)
    with process_settings(on, torch.device("cuda")):
        assert _flags() == (True, True)
    assert _flags() == (False, False)
    with pytest.raises(RuntimeError), process_settings(on, torch.device("cuda")):
        raise RuntimeError("a failed run restores them too")
    assert _flags() == (False, False)
    with process_settings(on, torch.device("cpu")):  # TF32 is a CUDA matter
        assert _flags() == (False, False)


def test_a_run_leaves_the_process_as_it_found_it(tf32_off, monkeypatch, tmp_path, tiny_model_path):
    """Even a run that turns TF32 on (as on an Ampere GPU) ends with the caller's flags."""
    import ti_experiments.training.loop as loop
    from conftest import TINY_RUN, compose
    from ti_experiments.experiment import run

    seen = []
    real = loop.process_settings

    def on_cuda(hardware, device):
        seen.append(hardware.allow_tf32)
        return real(hardware, torch.device("cuda"))  # as if the device were a GPU

    monkeypatch.setattr(loop, "process_settings", on_cuda)
    run(compose(*TINY_RUN, "hardware.allow_tf32=true", "train.max_steps=1", output_dir=tmp_path))
    assert seen == [True] and _flags() == (False, False)


def test_dtypes_follow_the_mixed_precision_and_sdxl_vae_upcasts():
    assert weight_dtype_for("no") == torch.float32 and weight_dtype_for("bf16") == torch.bfloat16
    placement = Placement(torch.device("cpu"), torch.float16, HardwareSettings())
    vae = SimpleNamespace(config={"force_upcast": True})
    assert placement.vae_dtype(SimpleNamespace(family=StableDiffusionXL(), vae=vae)) == torch.float32
    assert placement.vae_dtype(SimpleNamespace(family=StableDiffusion(), vae=vae)) == torch.float16
    module = torch.nn.Linear(2, 2)
    assert placement.put(module, torch.float32).weight.dtype == torch.float32
    assert placement.put(module).weight.dtype == torch.float16
