"""Through the real command line: reproduce a finished run, and runs started together stay apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY_RUN, run_cli

pytestmark = pytest.mark.slow


def _module(name: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", name, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())


def test_reproduce_gives_the_same_embedding(tmp_path):
    first = tmp_path / "first"
    done = run_cli(*TINY_RUN, "seed=3", f"hydra.run.dir={first}")
    assert done.returncode == 0, done.stderr[-3000:]
    again = _module("ti_experiments.reproduce", str(first), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    [second] = list((tmp_path / "outputs" / "runs").glob("*/*"))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, second))
    assert a["learned_embeds_sha256"] == b["learned_embeds_sha256"] and a["steps"] == b["steps"] == 4
    assert "reproduced_from: " + str(first) in (second / "resolved_config.yaml").read_text()
    assert json.loads((second / "run.json").read_text())["status"] == "completed"


def test_reproduce_of_a_folder_that_is_not_a_run(tmp_path):
    result = _module("ti_experiments.reproduce", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    # a run that starts (its folder claimed, run.json written) and fails at once, before any model loads
    # (a run refused before it starts leaves no folder, so it would show nothing here)
    cmd = [sys.executable, "-m", "ti_experiments", "+concept=demo", "model=tiny", "logger=none",
           f"concept.train_data_dir={tmp_path / 'no-such-folder'}"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [2, 2]
    folders = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(folders) == 2 and all((f / "run.json").is_file() for f in folders)


def test_reproduce_into_its_source_folder_is_refused_and_changes_nothing(tmp_path):
    first = tmp_path / "first"
    assert run_cli(*TINY_RUN, f"hydra.run.dir={first}").returncode == 0
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and p.name != ".lock"}
    again = _module("ti_experiments.reproduce", str(first), f"hydra.run.dir={first}", cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert again.stderr.strip().splitlines()[-1].startswith(f"error: {first} already holds a run")
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_reproducing_a_resumed_run_trains_from_step_0(tmp_path):
    first = tmp_path / "first"
    base = [*TINY_RUN, "train.checkpointing_steps=1", f"hydra.run.dir={first}"]
    assert run_cli(*base, "train.max_steps=2").returncode == 0
    assert run_cli(*base, "train.max_steps=3", "train.resume_from_checkpoint=latest").returncode == 0
    again = _module("ti_experiments.reproduce", str(first), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    [second] = list((tmp_path / "outputs" / "runs").glob("*/*"))
    steps = [json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, second))
    assert a["learned_embeds_sha256"] == b["learned_embeds_sha256"]  # resumed == straight, on a CPU
