"""judge rescores both sides of a versus folder with other judge settings, every saved step included."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.models.embeddings import save_learned_embeds
from ti_experiments_dev.judge import main


@pytest.mark.train
def test_both_sides_rescored_with_more_images(tmp_path, capsys, tiny_model_path):
    from ti_experiments.experiment import run

    out = tmp_path / "versus"
    ours = run(compose(*TINY_RUN, output_dir=out / "ours"))
    example = tmp_path / "example"
    example.mkdir()
    rows = next(iter(load_file(ours / "learned_embeds.safetensors").values()))
    save_learned_embeds(example / "learned_embeds.safetensors", "<demo-toy>", torch.zeros_like(rows))
    (out / "versus.json").write_text(json.dumps({"example": {"command": ["python", "--output_dir", str(example)]}}))
    assert main([str(out), "evaluation.num_images=2", "evaluation.num_prompts=2"]) == 0
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    summary = json.loads((ours / "summary.json").read_text())
    kept = scored[0]
    assert kept["side"] == "ours" and kept["step"] == f"kept {summary['kept_step']}"
    assert kept["heldout_loss"] == pytest.approx(summary["heldout_loss"], rel=1e-4)  # the run's own draws
    saved = list(ours.glob("learned_embeds-steps-*.safetensors"))
    assert len([r for r in scored if r["side"] == "ours"]) == 1 + len(saved)
    (theirs,) = [r for r in scored if r["side"] == "example"]  # no step files: its final one, at 3000
    assert theirs["step"] == 3000 and theirs["clip_i"] is not None and theirs["heldout_loss"] != kept["heldout_loss"]


def test_a_folder_versus_did_not_write_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: give folders that versus or targets wrote")
