"""Warm starts: `concept.init_from` from every exchanged format, continuing a run, and resume winning."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import ti_experiments.experiment as experiment
from conftest import TINY_RUN, compose
from ti_experiments.config.checks import check_config
from ti_experiments.models.embeddings import save_a1111, save_learned_embeds
from ti_experiments.errors import TIError

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each


def _rows(n, seed=0):
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))


def _write(fmt: str, folder, rows):
    """An embedding of `rows` in format `fmt`; returns the path to give concept.init_from."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "diffusers":
        return save_learned_embeds(folder / "learned_embeds.safetensors", "<old>", rows)
    if fmt == "a1111":
        return save_a1111(folder / "old-style.safetensors", rows)
    if fmt == "a1111-pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": rows}, "name": "old", "step": 9},
                   folder / "old.pt")
        return folder / "old.pt"
    if fmt == "sd-concepts":  # learned_embeds.bin ({token: 1-D tensor}) and token_identifier.txt
        torch.save({"<old>": rows[0]}, folder / "learned_embeds.bin")
        (folder / "token_identifier.txt").write_text("<old>")
        (folder / "type_of_concept.txt").write_text("object")
        return folder
    raise AssertionError(fmt)


def _capture_start(monkeypatch) -> list:
    """The placeholder rows as the optimizer first sees them, for each run started in this test."""
    starts = []
    original = experiment.add_placeholder_tokens

    def spy(*args, **kwargs):
        module = original(*args, **kwargs)
        starts.append(module.vectors.detach().clone())
        return module

    monkeypatch.setattr(experiment, "add_placeholder_tokens", spy)
    return starts


@pytest.mark.parametrize("fmt,n", [("diffusers", 2), ("a1111", 2), ("a1111-pt", 3), ("sd-concepts", 1)])
def test_the_first_step_starts_from_the_file(tmp_path, monkeypatch, tiny_model_path, fmt, n):
    rows = _rows(n, seed=n)
    path = _write(fmt, tmp_path / "emb", rows)
    starts = _capture_start(monkeypatch)
    cfg = compose(*TINY_RUN, f"concept.num_vectors={n}", f"concept.init_from={path}",
                  output_dir=tmp_path / "run")
    p = experiment.prepare(check_config(cfg), tmp_path / "run")
    assert torch.equal(starts[0], rows) and torch.equal(p.embeddings[0].vectors.detach(), rows)
    assert p.init_from["format"] == ("diffusers" if fmt == "sd-concepts" else fmt)
    assert p.init_from["num_vectors"] == n and len(p.init_from["sha256"]) == 64


def test_a_run_continues_from_an_earlier_run(tmp_path, monkeypatch):
    starts = _capture_start(monkeypatch)
    first = experiment.run(compose(*TINY_RUN, "concept.num_vectors=2", "train.max_steps=2",
                                   output_dir=tmp_path / "first"))
    second = experiment.run(compose(*TINY_RUN, "concept.num_vectors=2", "train.max_steps=2",
                                    f"concept.init_from={first}", output_dir=tmp_path / "second"))
    learned = load_file(first / "learned_embeds.safetensors")["<demo-toy>"]
    assert torch.equal(starts[1], learned)  # exactly where the first run ended
    assert not torch.equal(load_file(second / "learned_embeds.safetensors")["<demo-toy>"], learned)  # and trained on
    record = json.loads((second / "run.json").read_text())["init_from"]
    summary = json.loads((first / "summary.json").read_text())
    assert record["sha256"] == summary["learned_embeds_sha256"] and record["token"] == "<demo-toy>"


def test_a_checkpoint_to_resume_wins_over_init_from(tmp_path):
    common = [*TINY_RUN, "train.checkpointing_steps=2"]
    straight = experiment.run(compose(*common, output_dir=tmp_path / "a"))
    experiment.run(compose(*common, "train.max_steps=2", output_dir=tmp_path / "b"))
    other = _write("a1111", tmp_path / "emb", _rows(1, seed=5))
    resumed = experiment.run(compose(*common, f"concept.init_from={other}", "train.resume_from_checkpoint=latest",
                                     output_dir=tmp_path / "b"))
    assert torch.equal(load_file(straight / "learned_embeds.safetensors")["<demo-toy>"],
                       load_file(resumed / "learned_embeds.safetensors")["<demo-toy>"])


def test_an_init_file_that_does_not_fit_is_refused_before_training(tmp_path):
    wide = save_learned_embeds(tmp_path / "sd2.safetensors", "<x>", torch.zeros(1, 1024))
    with pytest.raises(TIError, match=r"SD 2.x embedding and does not fit"):
        experiment.run(compose(*TINY_RUN, f"concept.init_from={wide}", output_dir=tmp_path / "run"))
    three = save_learned_embeds(tmp_path / "three.safetensors", "<x>", _rows(3))
    with pytest.raises(TIError, match="holds 3 vectors and concept.num_vectors is 1"):
        experiment.run(compose(*TINY_RUN, f"concept.init_from={three}", output_dir=tmp_path / "run2"))
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "run2" / "learned_embeds.safetensors").exists()


def test_a_non_finite_start_file_is_named(tmp_path):
    rows = _rows(1)
    rows[0, 3] = float("nan")
    path = save_learned_embeds_unchecked(tmp_path / "broken.safetensors", rows)
    with pytest.raises(TIError, match=rf"^{path}: '<old>' holds values that are not finite \(NaN or inf\); fix: use "
                                      "another embedding file"):
        experiment.run(compose(*TINY_RUN, f"concept.init_from={path}", output_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "learned_embeds.safetensors").exists()


def save_learned_embeds_unchecked(path, rows):
    """A file as a diverged run elsewhere might leave it (our own writer refuses non-finite rows)."""
    from safetensors.torch import save_file

    save_file({"<old>": rows}, str(path))
    return path
