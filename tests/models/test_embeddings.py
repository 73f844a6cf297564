"""Placeholder tokens: naming, initialisation, only new rows trainable, files diffusers reads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from ti_experiments.models.embeddings import (
    PlaceholderEmbedding, add_placeholder_tokens, placeholder_tokens, save_learned_embeds, unsplice,
)
from ti_experiments.errors import TIError


@pytest.fixture()
def tok_te(tiny_model_path):
    tok = CLIPTokenizer.from_pretrained(tiny_model_path, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(tiny_model_path, subfolder="text_encoder")
    return tok, te


def test_placeholder_token_names():
    assert placeholder_tokens("<x>", 1) == ["<x>"]
    assert placeholder_tokens("<x>", 3) == ["<x>", "<x>_1", "<x>_2"]


def test_new_rows_start_as_the_initializer_and_old_rows_are_untouched(tok_te):
    tok, te = tok_te
    before = te.get_input_embeddings().weight.detach().clone()
    init_id = tok.encode("toy", add_special_tokens=False)[0]
    module = add_placeholder_tokens(tok, te, "<new>", "toy", 3)
    ids = tok.convert_tokens_to_ids(placeholder_tokens("<new>", 3))
    assert ids == list(range(before.shape[0], before.shape[0] + 3))
    assert isinstance(te.get_input_embeddings(), PlaceholderEmbedding)
    assert module.vectors.dtype == torch.float32 and module.vectors.shape == (3, before.shape[1])
    assert torch.equal(module.vectors.detach(), before[init_id].expand(3, -1))
    assert torch.equal(module.weight[: before.shape[0]], before)


def test_only_the_new_rows_get_gradients_and_merge_writes_them(tok_te):
    tok, te = tok_te
    module = add_placeholder_tokens(tok, te, "<new>", "toy", 2)
    ids = tok("a photo of <new> <new>_1", padding="max_length", max_length=77, return_tensors="pt").input_ids
    te(ids)[0].pow(2).sum().backward()
    assert module.vectors.grad is not None and module.vectors.grad.abs().sum() > 0
    assert module.base.weight.grad is None and not module.base.weight.requires_grad
    with torch.no_grad():
        module.vectors.add_(1.0)
    unsplice(te)
    plain = te.get_input_embeddings()
    assert isinstance(plain, torch.nn.Embedding)
    assert torch.equal(plain.weight[-2:], module.vectors.detach())


def test_lookup_matches_a_plain_embedding(tok_te):
    tok, te = tok_te
    module = add_placeholder_tokens(tok, te, "<new>", "cat", 1)
    ids = torch.tensor([[0, 5, module.first_id, 7]])
    assert torch.equal(module(ids), module.base(ids))


@pytest.mark.parametrize("placeholder,initializer,n,message", [
    ("toy", "cat", 1, "already in the tokenizer's vocabulary"),
    ("<new>", "zqxvbn", 1, "not one"),
    ("<new>", "a photo", 1, "not one"),
    ("two words", "toy", 1, "spaces"),
])
def test_bad_tokens_are_refused(tok_te, placeholder, initializer, n, message):
    tok, te = tok_te
    size = len(tok)
    with pytest.raises(TIError, match=message):
        add_placeholder_tokens(tok, te, placeholder, initializer, n)
    assert len(tok) == size  # nothing half-added


def test_placeholder_suffix_clash_is_refused(tok_te):
    tok, te = tok_te
    tok.add_tokens(["<x>_1"])
    with pytest.raises(TIError, match="<x>_1"):
        add_placeholder_tokens(tok, te, "<x>", "toy", 2)


def test_saved_file_is_the_diffusers_layout(tmp_path):
    vectors = torch.randn(2, 32, dtype=torch.float16)
    path = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<x>", vectors)
    data = load_file(path)
    assert list(data) == ["<x>"] and data["<x>"].dtype == torch.float32 and data["<x>"].shape == (2, 32)


def test_a_nan_embedding_never_replaces_a_good_file(tmp_path):
    path = save_learned_embeds(tmp_path / "e.safetensors", "<x>", torch.ones(1, 4))
    with pytest.raises(TIError, match="not finite"):
        save_learned_embeds(path, "<x>", torch.full((1, 4), float("nan")))
    assert torch.equal(load_file(path)["<x>"], torch.ones(1, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]


def _rows(n=2, d=32, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ["diffusers", "a1111", "sdxl", "a1111-pt", "folder", "diffusers-sdxl"])
def test_read_embedding_every_format(tmp_path, fmt):
    from ti_experiments.models.embeddings import save_a1111, save_sdxl
    from ti_experiments.records.run_dir import read_embedding

    a, b = _rows(d=32), _rows(d=64, seed=1)
    if fmt == "diffusers":
        path, want, token = save_learned_embeds(tmp_path / "x.safetensors", "<t>", a), [a], "<t>"
    elif fmt == "a1111":
        path, want, token = save_a1111(tmp_path / "my-style.safetensors", a), [a], "my-style"
    elif fmt == "sdxl":
        path, want, token = save_sdxl(tmp_path / "x.safetensors", a, b), [a, b], None
    elif fmt == "a1111-pt":
        path = tmp_path / "old.pt"
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": a}, "name": "oldname", "step": 5}, path)
        want, token = [a], "oldname"
    elif fmt == "folder":
        save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<key>", a)
        (tmp_path / "token_identifier.txt").write_text("<named>")
        path, want, token = tmp_path, [a], "<named>"
    else:
        save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<t>", a)
        save_learned_embeds(tmp_path / "learned_embeds_2.safetensors", "<t>", b)
        path, want, token = tmp_path, [a, b], "<t>"
    emb = read_embedding(path)
    assert emb.format == fmt if fmt != "folder" else emb.format == "diffusers"
    assert emb.token == token
    assert len(emb.vectors) == len(want) and all(torch.equal(x, y) for x, y in zip(emb.vectors, want))


def test_read_embedding_refuses_what_is_not_one(tmp_path):
    from safetensors.torch import save_file

    from ti_experiments.models.embeddings import check_fits
    from ti_experiments.records.run_dir import read_embedding

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(TIError, match="not a readable embedding"):
        read_embedding(bad)
    two = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, str(two))
    with pytest.raises(TIError, match="not a textual-inversion embedding"):
        read_embedding(two)
    code = tmp_path / "code.pt"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(1, 4))})}, code)
    with pytest.raises(TIError, match="not a readable embedding"):  # a pickled class (NEWOBJ) is not data
        read_embedding(code)
    with pytest.raises(TIError, match="does not exist"):
        read_embedding(tmp_path / "missing.safetensors")
    emb = read_embedding(save_learned_embeds(tmp_path / "sd2.safetensors", "<t>", torch.zeros(1, 1024)))
    with pytest.raises(TIError, match=r"SD 2.x embedding and does not fit this model \(SD 1.x\)"):
        check_fits(emb, [768])
    check_fits(emb, [1024])


def test_init_vectors_start_the_new_rows_exactly(tok_te):
    tok, te = tok_te
    start = _rows(3, 32, seed=7)
    module = add_placeholder_tokens(tok, te, "<warm>", None, 3, init_vectors=start)
    assert torch.equal(module.vectors.detach(), start)
    assert torch.equal(module.weight[-3:], start)


def test_read_init_refuses_another_number_of_vectors(tmp_path):
    from ti_experiments.experiment import read_init

    path = save_learned_embeds(tmp_path / "e.safetensors", "<x>", _rows(4, 32))
    with pytest.raises(TIError, match=r"holds 4 vectors and concept.num_vectors is 2; fix: set concept.num_vectors=4"):
        read_init(path, 2)
    assert read_init(path, 4).num_vectors == 4
