"""Stopped from outside: SIGTERM/SIGINT save a checkpoint and the embedding, and resuming ends where an
uninterrupted run ends. Real subprocesses on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow

RUN = ["+concept=demo", "model=tiny", "hardware=cpu", "logger=none", "validation.enabled=false",
       "train.max_steps=30", "train.save_steps=null", "train.checkpointing_steps=null",
       "train.batch_size=2", "train.gradient_accumulation_steps=2"]


def _steps_done(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_saves_its_state_and_resumes_to_the_same_result(tmp_path, sig):
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "ti_experiments", *RUN, f"hydra.run.dir={stopped}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while _steps_done(stopped) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and signal.Signals(sig).name in errors[0] and "resume" in errors[0]
    assert "Traceback" not in err
    record = json.loads((stopped / "run.json").read_text())
    assert record["status"] == "interrupted"
    step = _steps_done(stopped)
    assert 5 <= step < 30
    assert (stopped / f"checkpoint-{step}" / "trainer_state.json").exists()
    assert (stopped / f"learned_embeds-steps-{step}.safetensors").exists()
    assert not (stopped / "learned_embeds.safetensors").exists()
    if sig == signal.SIGINT:
        return  # the same stop path; resuming is checked once, below, for SIGTERM

    resumed = run_cli(*RUN, f"hydra.run.dir={stopped}", "train.resume_from_checkpoint=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from ti_experiments.api import train

    train(*RUN, output_dir=tmp_path / "straight")  # the uninterrupted run, in-process: only its result matters
    a = load_file(stopped / "learned_embeds.safetensors")["<demo-toy>"]
    b = load_file(tmp_path / "straight" / "learned_embeds.safetensors")["<demo-toy>"]
    assert (a == b).all()
    assert json.loads((stopped / "run.json").read_text())["status"] == "completed"


def test_kill_9_leaves_only_complete_files_and_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    args = [a for a in RUN if not a.startswith(("train.save_steps", "train.checkpointing_steps"))]
    args += ["train.save_steps=1", "train.checkpointing_steps=1", "train.checkpoints_total_limit=3"]
    proc = subprocess.Popen([sys.executable, "-m", "ti_experiments", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while _steps_done(run_dir) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)
    for path in run_dir.glob("learned_embeds-steps-*.safetensors"):
        assert load_file(path)["<demo-toy>"].shape == (1, 32)  # every file with a final name is whole
    for checkpoint in run_dir.glob("checkpoint-*"):
        assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "state.safetensors").exists()
    resumed = run_cli(*args, f"hydra.run.dir={run_dir}", "train.resume_from_checkpoint=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 30
