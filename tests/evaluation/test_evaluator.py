"""Evaluation during training: values in the step's metrics row and in summary.json, the best embedding
kept, and the trained embedding unchanged by evaluating."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.experiment import run
from ti_experiments.records.run_dir import read_metrics

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each

IMAGES = ["evaluation.image_metrics=true", "evaluation.num_prompts=2", "validation.num_inference_steps=2",
          "evaluation.steps=1"]


def test_metrics_rows_summary_and_best_embedding(tmp_path):
    run_dir = run(compose(*TINY_RUN, *IMAGES, output_dir=tmp_path / "on"))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows if "heldout_loss" in r] == [1, 2, 3, 4]
    scored = [r for r in rows if "clip_i" in r]
    assert [r["step"] for r in scored] == [2, 4]  # image_steps follows train.save_steps, and the end
    for r in scored:
        assert all(-1 <= r[k] <= 1 for k in ("clip_i", "clip_t", "dino")) and r["eval_seconds"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["clip_i"] == scored[-1]["clip_i"] and summary["heldout_loss"] == rows[-1]["heldout_loss"]
    assert summary["best_metric"] == "clip_i"
    best = max(scored, key=lambda r: r["clip_i"])
    assert summary["best_step"] == best["step"] and summary["best_clip_i"] == best["clip_i"]
    kept = load_file(run_dir / "learned_embeds-best.safetensors")["<demo-toy>"]
    assert torch.equal(kept, load_file(run_dir / f"learned_embeds-steps-{best['step']}.safetensors")["<demo-toy>"])

    off = run(compose(*TINY_RUN, "evaluation=none", output_dir=tmp_path / "off"))
    emb = lambda d: load_file(d / "learned_embeds.safetensors")["<demo-toy>"]  # noqa: E731
    assert torch.equal(emb(run_dir), emb(off))  # evaluating never changes what is trained
    assert not (off / "learned_embeds-best.safetensors").exists()
    assert "heldout_loss" not in json.loads((off / "summary.json").read_text())


def test_best_by_heldout_loss_without_image_metrics(tmp_path):
    run_dir = run(compose(*TINY_RUN, "evaluation.steps=2", output_dir=tmp_path))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_metric"] == "heldout_loss" and "clip_i" not in summary
    rows = [r for r in read_metrics(run_dir) if "heldout_loss" in r]
    assert summary["best_heldout_loss"] == pytest.approx(min(r["heldout_loss"] for r in rows))
