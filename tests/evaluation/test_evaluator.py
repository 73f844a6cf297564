"""Evaluation during training: values in the step's metrics row and in summary.json (the kept step's),
and the trained embedding unchanged by evaluating."""

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


def test_metrics_rows_and_the_kept_steps_summary(tmp_path):
    run_dir = run(compose(*TINY_RUN, *IMAGES, output_dir=tmp_path / "on"))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows if "heldout_loss" in r] == [1, 2, 3, 4]
    scored = [r for r in rows if "clip_i" in r]
    assert [r["step"] for r in scored] == [2, 4]  # image_steps follows train.save_steps, and the end
    for r in scored:
        assert all(-1 <= r[k] <= 1 for k in ("clip_i", "clip_t", "dino")) and r["eval_seconds"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    kept = min((r for r in rows if "heldout_loss" in r), key=lambda r: r["heldout_loss"])
    assert summary["kept_step"] == kept["step"] and summary["heldout_loss"] == kept["heldout_loss"]
    assert all(-1 <= summary[k] <= 1 for k in ("clip_i", "clip_t", "dino"))  # of the kept step's embedding
    if kept["step"] in (2, 4):
        assert summary["clip_i"] == kept["clip_i"]
    assert not list(run_dir.glob("learned_embeds-best*"))  # one embedding is the answer

    off = run(compose(*TINY_RUN, "evaluation=none", output_dir=tmp_path / "off"))
    emb = lambda d: load_file(d / "learned_embeds-steps-4.safetensors")["<demo-toy>"]  # noqa: E731
    assert torch.equal(emb(run_dir), emb(off))  # evaluating never changes what is trained
    summary = json.loads((off / "summary.json").read_text())
    assert "heldout_loss" not in summary and summary["kept_step"] == 4 and "evaluation is off" in summary["kept_by"]
