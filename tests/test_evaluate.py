"""`python -m ti_experiments.evaluate RUN_DIR`: scores a finished run's embeddings after the fact."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY_RUN, compose
from ti_experiments.evaluate import evaluate_run, main
from ti_experiments.experiment import run
from ti_experiments.records.run_dir import read_metrics

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each

FAST_IMAGES = ["evaluation.image_metrics=true", "evaluation.num_prompts=2", "validation.num_inference_steps=2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return run(compose(*TINY_RUN, "evaluation.steps=2", output_dir=tmp_path_factory.mktemp("run")))


def test_scores_every_saved_embedding_and_matches_training(finished_run):
    result = evaluate_run(finished_run, FAST_IMAGES)
    entries = result["embeddings"]
    kept = json.loads((finished_run / "summary.json").read_text())["kept_step"]
    assert [(e["step"], e["file"]) for e in entries] == [
        (2, "learned_embeds-steps-2.safetensors"), (4, "learned_embeds-steps-4.safetensors"),
        (kept, "learned_embeds.safetensors")]
    # the same held-out triples as during training: the same numbers
    trained = {r["step"]: r["heldout_loss"] for r in read_metrics(finished_run) if "heldout_loss" in r}
    for e in entries:
        assert e["heldout_loss"] == pytest.approx(trained[e["step"]], rel=1e-6)
        assert all(-1 <= e[k] <= 1 for k in ("clip_i", "clip_t", "dino"))
    written = json.loads((finished_run / "evaluation.json").read_text())
    assert written["embeddings"] == json.loads(json.dumps(entries))
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["clip_i"] == entries[-1]["clip_i"]  # the run's embedding's (the kept step's)
    lowest = min(entries, key=lambda e: e["heldout_loss"])
    assert result["preferred"]["heldout_loss"]["step"] == lowest["step"] == kept
    assert not list(finished_run.glob("learned_embeds-best*"))
    assert summary["final_loss"] is not None  # the training's own summary is kept


def test_bad_input_is_one_line_with_exit_code_2(tmp_path, finished_run, capsys):
    assert main([str(tmp_path)]) == 2
    assert main([str(finished_run), "evaluation.nosuchkey=1"]) == 2
    assert main([str(finished_run), "evaluation=nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "fix:" in err and "Traceback" not in err


@pytest.mark.slow
def test_command_line(finished_run):
    out = subprocess.run([sys.executable, "-m", "ti_experiments.evaluate", str(finished_run)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "learned_embeds-steps-2.safetensors" in out.stdout and "lowest heldout_loss: step" in out.stdout
