"""The training step's memory savings compute exactly what autograd computes."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.activations import GEGLU
from torch import nn

from ti_experiments.models.embeddings import PlaceholderEmbedding
from ti_experiments.training.memory import (
    LeanConv2d,
    lean_backward,
    map_frozen_rows,
    plain_backward,
    return_free_heap,
)


def _unet():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32)
    return unet.requires_grad_(False).eval()


def _grad_and_saved(unet, channels_last: bool, dtype=torch.float32):
    torch.manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, dtype=dtype)
    hidden = torch.randn(2, 7, 32, requires_grad=True)  # the text encoder's output stays fp32, as in training
    unet = unet.to(dtype=dtype)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = unet(latents, torch.tensor([10, 900]), hidden).sample
        (out.float().square().mean()).backward()
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    return out.detach(), hidden.grad, sum(n for ptr, n in saved.items() if ptr not in params)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("channels_last, dtype", [(False, torch.float32), (True, torch.float32),
                                                   (True, torch.bfloat16)])
def test_lean_backward_gives_bit_identical_gradients_and_keeps_less(channels_last, dtype, recompute):
    plain = _unet()
    lean = copy.deepcopy(plain)
    swapped = lean_backward(lean, recompute_widest=recompute, from_bytes=0)
    assert all(m.recompute == recompute for m in lean.modules() if isinstance(m, GEGLU))  # one width here
    assert swapped == sum(type(m) in (nn.Conv2d, GEGLU) for m in plain.modules())
    assert any(type(m) is GEGLU for m in plain.modules())
    assert lean.state_dict().keys() == plain.state_dict().keys()
    out_a, grad_a, saved_a = _grad_and_saved(plain, channels_last, dtype)
    out_b, grad_b, saved_b = _grad_and_saved(lean, channels_last, dtype)
    assert grad_a.dtype == torch.float32 and grad_a.abs().sum() > 0
    assert torch.equal(out_a, out_b)
    assert torch.equal(grad_a, grad_b)
    assert saved_b < 0.8 * saved_a, (saved_a, saved_b)


def test_lean_conv_trains_its_weight_the_usual_way():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    lean = copy.deepcopy(conv)
    lean.__class__ = LeanConv2d
    x = torch.randn(1, 3, 5, 5)
    conv(x).sum().backward()
    lean(x).sum().backward()
    assert torch.equal(conv.weight.grad, lean.weight.grad)


def _embedding(rows=50, dim=8):
    torch.manual_seed(0)
    base = nn.Embedding(rows + 1, dim)
    return PlaceholderEmbedding(base, first_id=rows, num_vectors=1)


def test_mapped_frozen_rows_read_and_merge_like_memory(tmp_path):
    embedding = _embedding()
    before = embedding.base.weight.detach().clone()
    ids = torch.tensor([[0, 7, 49, 50]])
    expected = embedding(ids)
    assert map_frozen_rows(embedding, tmp_path)
    assert not list(tmp_path.iterdir())  # unnamed: nothing left behind
    assert not embedding.base.weight.requires_grad
    assert torch.equal(embedding.base.weight, before)
    assert torch.equal(embedding(ids), expected)
    with torch.no_grad():
        embedding.vectors.add_(1.0)
    merged = embedding.merged()
    assert torch.equal(merged.weight[50], embedding.vectors[0])
    assert torch.equal(merged.weight[:50], before[:50])


def test_frozen_rows_stay_in_memory_where_no_file_can_be_written(tmp_path):
    embedding = _embedding()
    weight = embedding.base.weight
    assert not map_frozen_rows(embedding, tmp_path / "missing")
    assert embedding.base.weight is weight


def test_return_free_heap_is_safe_to_call():
    return_free_heap()
    return_free_heap()


def test_only_the_highest_resolution_geglus_recompute():
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32).requires_grad_(False)
    assert lean_backward(unet) == 0  # a small UNet keeps autograd's layers
    lean_backward(unet, from_bytes=0)
    widths = {(m.proj.in_features, m.recompute) for m in unet.modules() if isinstance(m, GEGLU)}
    assert widths == {(32, True), (64, False)}
    plain_backward(unet)
    assert not any(type(m) is not GEGLU and isinstance(m, GEGLU) or isinstance(m, LeanConv2d) for m in unet.modules())


def test_the_heap_is_trimmed_after_each_unet_block_until_the_example_step_undoes_it(monkeypatch):
    from ti_experiments.training import memory

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32).requires_grad_(False)
    calls = []
    monkeypatch.setattr(memory, "return_free_heap", lambda: calls.append(1))
    inputs = (torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 7, 32))
    with torch.no_grad():
        before = unet(*inputs).sample
        assert memory.trim_heap_between_blocks(unet) == 0  # a small UNet: not worth a trim
        unet(*inputs)
        assert memory.trim_heap_between_blocks(unet, from_bytes=0) == 5  # 2 down, mid, 2 up
        assert memory.trim_heap_between_blocks(unet, from_bytes=0) == 5  # again: still one trim per block
        after = unet(*inputs).sample
        assert len(calls) == 5
        assert torch.equal(before, after)
        plain_backward(unet)
        unet(*inputs)
    assert len(calls) == 5


def test_a_parked_module_computes_the_same_and_its_pages_can_leave(tmp_path):
    from ti_experiments.training.memory import park_in_file

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)).eval()
    module.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    expected = module(x)
    release = park_in_file(module, tmp_path)
    assert release is not None and list(tmp_path.iterdir()) == []  # unnamed: gone with the process
    assert torch.equal(module(x), expected)
    release()
    assert torch.equal(module(x), expected)  # read back from the page cache after the pages left
    trainable = torch.nn.Linear(2, 2)
    assert park_in_file(trainable, tmp_path) is None  # only frozen modules
