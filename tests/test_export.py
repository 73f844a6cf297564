"""Exports for other tools: the A1111/ComfyUI file of every run, the export command, and their load-back."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.models.embeddings import save_a1111, save_learned_embeds, save_sdxl
from ti_experiments.errors import TIError
from ti_experiments.export import export, main
from ti_experiments.records.run_dir import a1111_name, read_embedding


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_path):
    from ti_experiments.experiment import run

    return run(compose(*TINY_RUN, "concept.num_vectors=2", output_dir=tmp_path_factory.mktemp("run")))


def _learned(run_dir, name="learned_embeds.safetensors"):
    return load_file(run_dir / name)["<demo-toy>"]


def test_a1111_names_are_safe_file_names():
    assert a1111_name("<cat-toy>") == "cat-toy"
    assert a1111_name("<my style/v2>") == "my-style-v2"
    assert a1111_name("<>") == "embedding"
    assert a1111_name("learned_embeds") == "learned_embeds-a1111"  # never a diffusers file of the run


def test_every_run_writes_an_a1111_file_named_after_the_token(finished_run):
    path = finished_run / "demo-toy.safetensors"
    assert list(load_file(path)) == ["emb_params"]
    emb = read_embedding(path)
    assert emb.format == "a1111" and emb.token == "demo-toy"
    assert torch.equal(emb.vectors[0], _learned(finished_run))
    # the folder still reads as the diffusers concept it was
    assert read_embedding(finished_run).format == "diffusers" and read_embedding(finished_run).token == "<demo-toy>"


def test_the_a1111_file_loads_into_diffusers_under_its_file_name(finished_run, tiny_model_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_path, safety_checker=None)
    pipe.load_textual_inversion(str(finished_run / "demo-toy.safetensors"), token="demo-toy")
    ids = pipe.tokenizer.convert_tokens_to_ids(["demo-toy", "demo-toy_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], _learned(finished_run))


def test_diffusers_export_loads_into_a_pipeline(finished_run, tiny_model_path, tmp_path):
    from diffusers import StableDiffusionPipeline

    a1111 = export(finished_run, "a1111", out=tmp_path / "thing.safetensors")
    folder = export(a1111, "diffusers", out=tmp_path / "back", token="<thing>")
    assert sorted(p.name for p in folder.iterdir()) == ["learned_embeds.safetensors", "token_identifier.txt"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_path, safety_checker=None)
    pipe.load_textual_inversion(str(folder))
    ids = pipe.tokenizer.convert_tokens_to_ids(["<thing>", "<thing>_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], _learned(finished_run))


def test_default_outputs_sit_beside_the_source_and_carry_the_concept_type(finished_run):
    folder = export(finished_run, "diffusers")
    assert folder == finished_run / "demo-toy-diffusers"
    assert (folder / "type_of_concept.txt").read_text() == "object"
    assert read_embedding(folder).token == "<demo-toy>"
    assert export(finished_run, "a1111", step=2) == finished_run / "demo-toy-steps-2.safetensors"
    assert torch.equal(read_embedding(finished_run / "demo-toy-steps-2.safetensors").vectors[0],
                       _learned(finished_run, "learned_embeds-steps-2.safetensors"))


@pytest.mark.parametrize("source_format", ["diffusers", "a1111-pt"])
def test_any_readable_format_converts(tmp_path, source_format):
    rows = torch.randn(3, 32)
    if source_format == "diffusers":
        source = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<x>", rows)
    else:
        source = tmp_path / "old.pt"
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": rows}, "name": "old"}, source)
    a1111 = export(source, "a1111", out=tmp_path / "out" / "x.safetensors")
    assert list(load_file(a1111)) == ["emb_params"] and torch.equal(load_file(a1111)["emb_params"], rows)
    single = export(source, "diffusers", out=tmp_path / "out" / "d.safetensors")
    ((key, value),) = load_file(single).items()
    assert key == ("<x>" if source_format == "diffusers" else "old") and torch.equal(value, rows)


def test_sdxl_embeddings_convert_both_ways(tmp_path):
    clip_l, clip_g = torch.randn(2, 768), torch.randn(2, 1280)
    source = save_sdxl(tmp_path / "xl.safetensors", clip_l, clip_g)
    folder = export(source, "diffusers", out=tmp_path / "xl-diffusers", token="<xl>")
    back = read_embedding(folder)
    assert back.format == "diffusers-sdxl" and back.token == "<xl>"
    again = read_embedding(export(folder, "a1111", out=tmp_path / "xl2.safetensors"))
    assert again.format == "sdxl" and torch.equal(again.vectors[0], clip_l) and torch.equal(again.vectors[1], clip_g)


def test_bad_requests_are_one_line_errors(finished_run, tmp_path, capsys):
    with pytest.raises(TIError, match="no embedding saved at step 3; fix: use one of --step 2, 4"):
        export(finished_run, "a1111", step=3)
    with pytest.raises(TIError, match="is the file being read"):
        export(save_a1111(tmp_path / "a.safetensors", torch.ones(1, 4)), "a1111", out=tmp_path / "a.safetensors")
    with pytest.raises(TIError, match="does not end in .safetensors"):
        export(finished_run, "a1111", out=tmp_path / "a.pt")
    assert main([str(tmp_path / "missing"), "--format", "a1111"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist; fix:" in err and err.count("\n") == 1
    assert main([str(finished_run), "--format", "a1111", "--out", str(tmp_path / "cli.safetensors")]) == 0
    assert "written: " in capsys.readouterr().out and (tmp_path / "cli.safetensors").is_file()


def test_an_export_never_replaces_another_embedding(tmp_path):
    rows = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    source = save_learned_embeds(tmp_path / "src.safetensors", "<a>", rows)
    other = save_a1111(tmp_path / "mine.safetensors", rows + 1)
    before = other.read_bytes()
    with pytest.raises(TIError, match=rf"^--out {other} already holds another embedding; fix: choose another --out"):
        export(source, "a1111", out=other)
    assert other.read_bytes() == before
    folder = export(source, "diffusers", out=tmp_path / "concept")
    assert export(source, "diffusers", out=folder) == folder  # the same concept again: done, nothing rewritten
    with pytest.raises(TIError, match="already holds another embedding"):
        export(source, "diffusers", out=folder, token="<b>")
    assert read_embedding(folder).token == "<a>"
