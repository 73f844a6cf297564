"""The run directory is the record: run.json, metrics.jsonl, summary.json, also for failed runs."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import yaml

import ti_experiments.training.loop as loop
from conftest import TINY_RUN, compose
from ti_experiments.experiment import run


def _run(tmp_path, *overrides):
    return run(compose(*TINY_RUN, *overrides, output_dir=tmp_path), overrides=list(overrides))


def test_a_completed_run_records_everything(tmp_path):
    run_dir = _run(tmp_path, "seed=7")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["error"] is None
    assert record["seeds"] == {"train": 7, "validation": 7}
    assert record["start_time"] <= record["end_time"]
    assert set(record["versions"]) >= {"python", "torch", "diffusers", "transformers", "accelerate", "hydra-core"}
    assert all(record["versions"][k] for k in ("python", "torch", "diffusers", "transformers", "accelerate",
                                                   "hydra-core"))
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert isinstance(record["git"]["diff"], str)
    hw = record["hardware"]
    assert hw["cpu_count"] >= 1 and hw["memory_bytes"] > 0 and hw["gpu_count"] == len(hw["gpus"])
    assert record["overrides"] == ["seed=7"]

    resolved = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert "${" not in (run_dir / "resolved_config.yaml").read_text()
    assert resolved["train"]["batch_size"] == 1 and resolved["paths"]["output_dir"] == str(tmp_path)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"loss", "lr", "seconds", "steps_per_sec", "peak_memory_bytes"} <= set(r)
        assert r["loss"] > 0 and r["peak_memory_bytes"] > 0
    assert rows[-1]["seconds"] >= rows[0]["seconds"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert summary["wall_seconds"] >= summary["train_seconds"] > 0 and summary["steps_per_sec"] > 0
    assert summary["peak_memory_bytes"] >= rows[-1]["peak_memory_bytes"]
    embeds = (run_dir / "learned_embeds.safetensors").read_bytes()
    assert summary["learned_embeds_sha256"] == hashlib.sha256(embeds).hexdigest()


def _fail_at_step(monkeypatch, step, exc):
    calls = {"n": 0}
    original = loop.denoising_loss

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise exc
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "denoising_loss", failing)


def test_a_failing_run_is_recorded_as_failed_and_its_tracker_closed(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    finished = []
    original_finish = wandb.Run.finish

    def spy(self, *args, **kwargs):
        finished.append(kwargs.get("exit_code", args[0] if args else None))
        return original_finish(self, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "finish", spy)
    _fail_at_step(monkeypatch, 3, RuntimeError("boom at step 3"))
    with pytest.raises(RuntimeError, match="boom"):
        run(compose(*TINY_RUN, "logger=wandb", output_dir=tmp_path))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and record["end_time"]
    assert record["error"]["type"] == "RuntimeError" and "boom at step 3" in record["error"]["message"]
    assert "Traceback" in record["error"]["traceback"]
    assert finished and finished[0] == 1  # the W&B run was finished, marked failed
    assert wandb.run is None
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "learned_embeds.safetensors").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_an_interrupted_run_is_recorded_as_interrupted(tmp_path, monkeypatch):
    _fail_at_step(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(compose(*TINY_RUN, output_dir=tmp_path))
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "interrupted"


def test_progress_is_logged_in_lines_when_not_a_terminal(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ti_experiments"):
        _run(tmp_path, "train.max_steps=10")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines[0].startswith("step 1/10") and lines[-1].startswith("step 10/10")
    assert "loss" in lines[-1] and "lr" in lines[-1] and "steps/s" in lines[-1]


def test_read_metrics_skips_a_cut_line_and_keeps_the_last_record_of_a_step(tmp_path):
    from ti_experiments.records.run_dir import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 3, "lo'
                                            '\n{"step": 2, "loss": 5}\n{"step": 3, "loss": 6}\n')
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1), (2, 5), (3, 6)]
