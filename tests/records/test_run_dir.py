"""The run directory's files: names, records, and SDXL's two-encoder step files read as one concept."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ti_experiments.records import run_dir as run_files
from ti_experiments.errors import TIError
from ti_experiments.export import export, main


@pytest.fixture
def sdxl_run(tmp_path):
    """A run directory as an SDXL run leaves it: final concept and two saved steps, both encoders each."""
    torch.manual_seed(0)
    final = [torch.randn(2, 8), torch.randn(2, 12)]
    run_files.write_concept(tmp_path, "<xl-toy>", final, "object", other_tools=True)
    steps = {step: [torch.randn(2, 8), torch.randn(2, 12)] for step in (2, 4)}
    for step, vectors in steps.items():
        run_files.write_step_embedding(tmp_path, step, "<xl-toy>", vectors)
    return tmp_path, final, steps


def test_step_files_pair_both_encoders(sdxl_run):
    run_dir, _, steps = sdxl_run
    assert run_files.saved_steps(run_dir) == [2, 4]
    assert [p.name for p in run_files.step_files(run_dir, 2)] == [
        "learned_embeds-steps-2.safetensors", "learned_embeds_2-steps-2.safetensors"]
    embedding = run_files.read_embedding(run_dir, step=4)
    assert embedding.format == "diffusers-sdxl" and embedding.token == "<xl-toy>"
    assert [v.shape[1] for v in embedding.vectors] == [8, 12]
    assert all(torch.equal(a, b) for a, b in zip(embedding.vectors, steps[4]))
    with pytest.raises(TIError, match="no embedding saved at step 3; fix: use one of --step 2, 4"):
        run_files.read_embedding(run_dir, step=3)


def test_the_final_sdxl_concept_reads_from_the_folder(sdxl_run):
    run_dir, final, _ = sdxl_run
    embedding = run_files.read_embedding(run_dir)
    assert embedding.format == "diffusers-sdxl" and embedding.path == run_dir
    assert [p.name for p in embedding.files] == list(run_files.EMBEDDINGS)
    assert all(torch.equal(a, b) for a, b in zip(embedding.vectors, final))
    assert sorted(load_file(run_dir / "xl-toy.safetensors")) == ["clip_g", "clip_l"]


def test_export_step_of_an_sdxl_run(sdxl_run, tmp_path_factory, capsys):
    run_dir, _, steps = sdxl_run
    out = tmp_path_factory.mktemp("out")
    a1111 = export(run_dir, "a1111", out=out / "xl.safetensors", step=2)
    tensors = load_file(a1111)
    assert torch.equal(tensors["clip_l"], steps[2][0]) and torch.equal(tensors["clip_g"], steps[2][1])
    folder = export(run_dir, "diffusers", out=out / "xl-diffusers", step=2)
    assert sorted(p.name for p in folder.iterdir()) == [*run_files.EMBEDDINGS, run_files.TOKEN, run_files.CONCEPT_TYPE]
    assert main([str(run_dir), "--format", "a1111", "--step", "4"]) == 0
    assert (run_dir / "xl-toy-steps-4.safetensors").is_file()
    assert main([str(run_dir), "--format", "diffusers", "--step", "4", "--out", str(out / "one.safetensors")]) == 2
    assert "two diffusers files" in capsys.readouterr().err


def test_records_read_as_empty_when_missing_or_cut(tmp_path):
    assert run_files.read_summary(tmp_path) == {} and run_files.read_record(tmp_path) == {}
    (tmp_path / run_files.SUMMARY).write_text('{"final_loss": 0.')
    assert run_files.read_summary(tmp_path) == {}
    run_files.write_summary(tmp_path, {"final_loss": 0.5})
    assert run_files.read_summary(tmp_path) == {"final_loss": 0.5}
    run_files.append_metrics(tmp_path, {"step": 2, "loss": 1.0})
    run_files.append_metrics(tmp_path, {"step": 1, "loss": 2.0})
    with open(tmp_path / run_files.METRICS, "a") as f:
        f.write('{"step": 3, "lo')  # a line cut short by a crash
    assert [r["step"] for r in run_files.read_metrics(tmp_path)] == [1, 2]


def test_last_validation_skips_steps_without_images(tmp_path):
    from PIL import Image

    assert run_files.last_validation(tmp_path) == (None, [])
    for step in (10, 2):
        folder = run_files.validation_dir(tmp_path, step)
        folder.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(folder / "00-00.png")
    run_files.validation_dir(tmp_path, 20).mkdir()  # started, no image written yet
    step, images = run_files.last_validation(tmp_path)
    assert step == 10 and [p.name for p in images] == ["00-00.png"]


def test_checkpoints_are_complete_ones_in_step_order(tmp_path):
    for step, complete in ((10, True), (2, True), (30, False)):
        folder = run_files.checkpoint_dir(tmp_path, step)
        folder.mkdir()
        if complete:
            (folder / run_files.CHECKPOINT_STATE).write_text("{}")
    assert [p.name for p in run_files.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def _finished_run(folder, checkpoint: bool = False):
    run_files.write_json(folder / run_files.RECORD, {"status": "completed"})
    run_files.write_concept(folder, "<t>", [torch.zeros(1, 4)])
    if checkpoint:
        (run_files.checkpoint_dir(folder, 2)).mkdir()
        (run_files.checkpoint_dir(folder, 2) / run_files.CHECKPOINT_STATE).write_text("{}")
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("leftover", [run_files.RECORD, run_files.METRICS, run_files.COMPOSED_CONFIG,
                                      "learned_embeds-steps-2.safetensors", "checkpoint-2"])
def test_any_trace_of_a_run_makes_a_folder_taken(tmp_path, leftover):
    assert not run_files.holds_run(tmp_path)
    path = tmp_path / leftover
    path.mkdir(parents=True) if leftover.startswith("checkpoint") else (path.parent.mkdir(exist_ok=True), path.write_text("{}"))
    assert run_files.holds_run(tmp_path)


def test_a_folder_that_holds_a_run_is_refused_unless_the_run_resumes_it(tmp_path):
    before = _finished_run(tmp_path)
    with pytest.raises(TIError, match=rf"^{tmp_path} already holds a run \(run.json: completed\).*no checkpoint"):
        with run_files.claim(tmp_path):
            pass
    with pytest.raises(TIError, match="already holds a run"):  # nothing to resume: still refused
        with run_files.claim(tmp_path, "latest"):
            pass
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before
    _finished_run(tmp_path, checkpoint=True)
    for resume in ("latest", str(tmp_path), str(run_files.checkpoint_dir(tmp_path, 2))):
        with run_files.claim(tmp_path, resume):
            pass
    other = tmp_path.parent / (tmp_path.name + "-other")
    _finished_run(other, checkpoint=True)
    with pytest.raises(TIError, match="train.resume_from_checkpoint=latest"):  # another run's checkpoint
        with run_files.claim(tmp_path, str(run_files.checkpoint_dir(other, 2))):
            pass


def test_a_held_run_folder_is_refused_before_its_contents_are_looked_at(tmp_path):
    with run_files.claim(tmp_path):
        with pytest.raises(TIError, match=r"is in use by a run \(process \d+\); fix: wait for it to end"):
            with run_files.claim(tmp_path):
                pass
