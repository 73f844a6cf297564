"""Weights copied out of the file once: the same tensors as safetensors and diffusers give, each in its own
memory, in the dtype and memory format asked for."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from ti_experiments.models.weights import load_unet, read_safetensors


def test_every_dtype_and_shape_reads_back_exactly(tmp_path):
    tensors = {"a": torch.randn(3, 4, 5, 6), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(5),
               "d": torch.randn(2, 2).half(), "e": torch.zeros(0, 3), "f": torch.tensor([True, False])}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    read = read_safetensors(tmp_path / "t.safetensors")
    reference = load_file(str(tmp_path / "t.safetensors"))
    assert set(read) == set(reference)
    for name, tensor in reference.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape
        assert torch.equal(read[name], tensor)
    assert len({t.untyped_storage().data_ptr() for t in read.values() if t.numel()}) == 5  # one storage each


def test_the_unet_of_a_folder_is_the_one_diffusers_loads(tiny_model_path):
    from diffusers import UNet2DConditionModel

    ours = load_unet(tiny_model_path)
    theirs = UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet")
    assert ours is not None and not ours.training
    mine, other = ours.state_dict(), theirs.state_dict()
    assert set(mine) == set(other) and all(torch.equal(mine[k], other[k]) for k in mine)
    sample = torch.randn(1, 4, 8, 8)
    text = torch.randn(1, 77, theirs.config.cross_attention_dim)
    with torch.no_grad():
        assert torch.equal(ours(sample, 10, text).sample, theirs(sample, 10, text).sample)


def test_half_precision_weights_load_in_fp32_as_diffusers_loads_them(tiny_model_path, tmp_path):
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet").half().save_pretrained(tmp_path / "unet")
    ours = load_unet(tmp_path)
    theirs = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
    assert {p.dtype for p in ours.parameters()} == {p.dtype for p in theirs.parameters()} == {torch.float32}
    mine, other = ours.state_dict(), theirs.state_dict()
    assert all(torch.equal(mine[k], other[k]) for k in mine)


def test_a_folder_without_safetensors_weights_falls_back(tmp_path):
    (tmp_path / "unet").mkdir()
    assert load_unet(tmp_path) is None


def test_a_channels_last_load_is_the_same_unet_already_in_training_layout(tiny_model_path):
    from ti_experiments.training.placement import Placement
    from ti_experiments.training.settings import HardwareSettings

    plain, ours = load_unet(tiny_model_path), load_unet(tiny_model_path, channels_last=True)
    convs = [n for n, t in ours.state_dict().items() if t.dim() == 4]
    assert convs and all(ours.state_dict()[n].is_contiguous(memory_format=torch.channels_last) for n in convs)
    assert all(torch.equal(t, plain.state_dict()[n]) for n, t in ours.state_dict().items())
    before = {n: t.data_ptr() for n, t in ours.state_dict().items()}
    Placement(torch.device("cpu"), torch.float32, HardwareSettings(channels_last=True)).place_unet(ours, training=True)
    assert {n: t.data_ptr() for n, t in ours.state_dict().items()} == before  # no second copy


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    import pytest

    save_file({"a": torch.randn(64, 64)}, str(tmp_path / "t.safetensors"))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-100])
    with pytest.raises(OSError, match="t.safetensors ends inside tensor 'a'"):
        read_safetensors(tmp_path / "t.safetensors")
