"""Real multiruns on the tiny model through the CLI: sweep files, command-line sweeps, launchers,
a failing job, the sweep report, and one run trained data-parallel by two processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import REPO, run_cli
from ti_experiments.experiment import tensor_sha256

pytestmark = pytest.mark.slow

TINY = ["+concept=demo", "model=tiny", "hardware=cpu", "logger=none", "train.max_steps=2",
        "train.save_steps=null", "train.checkpointing_steps=null", "validation.enabled=false"]
SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


def _statuses(sweep: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/run.json")}


def test_sweep_files_exist_and_compose():
    assert {"num_vectors", "learning_rate", "initializer_token", "grid"} <= set(SWEEPS)
    for name in SWEEPS:
        out = run_cli("--config-dir", "sweeps", "--config-name", name, "+concept=demo", "--cfg", "hydra")
        assert out.returncode == 0, out.stderr[-2000:]
        params = out.stdout.split("params:")[1]
        assert re.search(r"concept\.num_vectors|optimizer\.lr|concept\.initializer_token", params), name
        assert "mode: MULTIRUN" in out.stdout


def test_a_sweep_over_initializer_words_starts_each_job_from_its_own_word():
    """Proposed words scored beside each job's word would give every job the same start."""
    for name in ("initializer_token", "grid"):
        out = run_cli("--config-dir", "sweeps", "--config-name", name, "+concept=demo", "--cfg", "job",
                      "--package", "evaluation")
        assert out.returncode == 0, out.stderr[-2000:]
        assert "initializer_proposals: 0" in out.stdout, name


def test_sweep_file_runs_every_job_and_writes_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    # the demo's own model: the sweeps work on the toy world (its held-out loss is in the report)
    toy_world = [a for a in TINY if a != "model=tiny"] + ["evaluation.image_metrics=false"]
    out = run_cli("--config-dir", "sweeps", "--config-name", "num_vectors", *toy_world, f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _statuses(sweep) == {"0": "completed", "1": "completed", "2": "completed", "3": "completed"}
    shapes = [load_file(sweep / str(i) / "learned_embeds.safetensors")["<demo-toy>"].shape[0] for i in range(4)]
    assert shapes == [1, 2, 4, 8]
    report = (sweep / "report.md").read_text()
    assert "concept.num_vectors" in report and report.count("completed") == 4
    assert (sweep / "sweep.png").exists() and (sweep / "loss_curves.png").exists()


@pytest.mark.parametrize("launcher", ["basic", "packed"])
def test_command_line_sweep_goes_on_after_a_failing_job(tmp_path, monkeypatch, launcher):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith("logger")]
    out = run_cli("-m", *args, "logger=wandb", "concept.initializer_token=toy,zqxvbn,cat", f"hydra.sweep.dir={sweep}",
                  f"hydra/launcher={launcher}")
    assert out.returncode == 1  # the sweep ran to the end, then reported its failure
    assert "zqxvbn" in out.stderr and "Traceback" not in out.stderr and "1 job(s) of the sweep failed: 1" in out.stderr
    assert _statuses(sweep) == {"0": "completed", "1": "failed", "2": "completed"}
    failed = json.loads((sweep / "1" / "run.json").read_text())["error"]["message"]
    assert "zqxvbn" in failed
    assert "| 1 | zqxvbn | failed |" in (sweep / "report.md").read_text()
    # each completed job has its own W&B run, grouped by the sweep
    group = "/".join(sweep.parts[-2:])
    for job in ("0", "2"):
        [run_file] = list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert group.encode() in run_file.read_bytes()


@pytest.mark.parametrize("launcher", ["parallel", "submitit_local"])
def test_launchers(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    extra = ["hydra.launcher.timeout_min=10"] if launcher.startswith("submitit") else []
    out = run_cli("-m", *TINY, f"hydra/launcher={launcher}", *extra, "concept.num_vectors=1,2",
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _statuses(sweep) == {"0": "completed", "1": "completed"}
    assert (sweep / "report.md").exists()
    if launcher.startswith("submitit"):
        assert (sweep / ".submitit").is_dir()


def test_two_processes_train_one_run_data_parallel(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ti_experiments", *[a for a in TINY if not a.startswith("validation")],
           "train.max_steps=3", "validation.steps=2", "validation.num_images=1",
           "validation.num_inference_steps=2", "train.checkpointing_steps=2", f"hydra.run.dir={run_dir}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-4000:]
    hashes = dict(re.findall(r"process (\d) of 2: text encoder 1's trained rows at step 3, tensor sha256 (\w+)", out.stdout + out.stderr))
    assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"]
    saved = load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"]
    assert tensor_sha256(saved) == hashes["0"]
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3]  # written once, not once per process
    assert "process 1 of 2" not in (run_dir / "ti.log").read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (run_dir / "validation").iterdir()) == ["grid.png", "step-2", "step-3"]
    assert (run_dir / "checkpoint-2").is_dir()


def test_several_processes_need_one_run_directory(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    out = subprocess.run([sys.executable, "-m", "ti_experiments", *TINY], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 2 and "hydra.run.dir" in out.stderr and "Traceback" not in out.stderr


def test_optuna_search_minimises_the_recorded_objective(tmp_path):
    import yaml

    sweep = tmp_path / "sweep"
    out = run_cli("--config-dir", "sweeps", "--config-name", "optuna", *TINY, "hydra.sweeper.n_trials=3",
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(3)]
    assert result["best_value"] == pytest.approx(min(s["avg_loss"] for s in summaries))
    assert set(result["best_params"]) == {"optimizer.lr", "concept.num_vectors"}
    assert (sweep / "report.md").exists()


def test_the_processes_of_one_torchrun_share_their_run_folder(tmp_path):
    """Rank 0 holds the folder's lock and writes the record; rank 1 trains beside it, and is not refused."""
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "ti_experiments",
                          *TINY, "train.max_steps=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert (out.stdout + out.stderr).count("trained rows at step 2, tensor sha256") >= 2


def test_packed_launcher_trains_jobs_that_share_a_model_together_and_says_how(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli("-m", *TINY, "hydra/launcher=packed", "concept.num_vectors=1,2", "data.resolution=64,32",
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    # the jobs differ in resolution, so two packs (Hydra numbers the jobs nv-major)
    assert "packed 4 jobs into 2 packs (pack 0: jobs #0, #2; pack 1: jobs #1, #3)" in out.stdout + out.stderr
    assert _statuses(sweep) == {str(i): "completed" for i in range(4)}
    for job, mates in {"0": ["0", "2"], "1": ["1", "3"], "2": ["0", "2"], "3": ["1", "3"]}.items():
        record = json.loads((sweep / job / "run.json").read_text())
        assert record["packed"]["with"] == mates and record["packed"]["job"] == job
        log = (sweep / job / "ti.log").read_text()
        assert log.count("done: 2 steps") == 1 and str(sweep / job / "learned_embeds") in log  # only its own lines
        assert (sweep / job / ".hydra" / "overrides.yaml").is_file()
    shapes = [load_file(sweep / str(i) / "learned_embeds.safetensors")["<demo-toy>"].shape[0] for i in range(4)]
    assert shapes == [1, 1, 2, 2]
    assert "| completed |" in (sweep / "report.md").read_text()
