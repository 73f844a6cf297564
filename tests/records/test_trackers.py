"""Trackers: W&B without credentials runs offline (never a login prompt) and receives loss and lr."""

from __future__ import annotations

import pytest

from conftest import TINY_RUN, compose
from ti_experiments.errors import TIError
from ti_experiments.experiment import run
from ti_experiments.records.trackers import TrackerSettings, flatten


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert TrackerSettings().wandb_mode() == "offline"
    assert TrackerSettings(mode="online").wandb_mode() == "offline"  # no credentials: never a prompt
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert TrackerSettings().wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert TrackerSettings(mode="online").wandb_mode() == "disabled"
    with pytest.raises(TIError, match=r"logger\.name='comet' is unknown; fix: use wandb, tensorboard or none"):
        TrackerSettings(name="comet")


def test_flatten_for_tensorboard():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": "None"}


def test_wandb_offline_run_gets_loss_and_lr(monkeypatch, tmp_path, capfd, caplog):
    import logging

    import wandb

    caplog.set_level(logging.INFO)

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logged = []
    original = wandb.Run.log

    def spy(self, data, *args, **kwargs):
        logged.append((kwargs.get("step"), dict(data)))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", spy)
    configs = []
    original_init = wandb.init

    def init_spy(*args, **kwargs):
        configs.append(kwargs)
        return original_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init_spy)
    run_dir = run(compose(*[o for o in TINY_RUN if not o.startswith("logger")], "logger=wandb",
                          "train.max_steps=2", output_dir=tmp_path / "run"))
    assert [step for step, _ in logged] == [1, 2]
    assert all({"loss", "lr"} <= set(data) for _, data in logged)
    assert configs[0]["mode"] == "offline" and configs[0]["dir"] == str(run_dir)
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    # W&B's own 30 lines (history, summary, sync hints) stay off the console; the run says it in one line
    out, err = capfd.readouterr()
    assert "wandb:" not in out + err, out + err
    assert [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()] == [
        f"W&B ran offline; upload this run later with: wandb sync {next((run_dir / 'wandb').glob('offline-run-*'))}"]


def test_wandb_online_with_a_server_that_never_answers_goes_offline_within_15_s(monkeypatch, tmp_path,
                                                                                 silent_server):
    import time

    import wandb
    from accelerate import Accelerator

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # credentials, and a network that hangs
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    settings = TrackerSettings(mode="online")
    accelerator = Accelerator(cpu=True, log_with="wandb")
    started = time.perf_counter()
    settings.start(accelerator, tmp_path, {"seed": 0})
    seconds = time.perf_counter() - started
    try:
        assert wandb.run is not None and wandb.run.settings.mode == "offline"
    finally:
        settings.finish(accelerator)
    assert seconds < 15, seconds


def test_wandb_online_that_fails_to_start_falls_back_to_offline(monkeypatch, tmp_path, answering_server):
    import wandb

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # credentials; the server answers, but init fails
    monkeypatch.setenv("WANDB_BASE_URL", answering_server)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    modes = []
    original_init = wandb.init

    def init(*args, **kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("could not reach api.wandb.ai")
        return original_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    run_dir = run(compose(*[o for o in TINY_RUN if not o.startswith("logger")], "logger=wandb",
                          "train.max_steps=1", output_dir=tmp_path))
    assert modes == ["online", "offline"]
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_sweep_jobs_are_grouped_and_tagged(tmp_path):
    t = TrackerSettings(tags=["mine"])
    t.identify(tmp_path / "3", sweep="2026-01-01/10-00-00-000001", job=3, choices={"concept": "demo"})
    assert t.group == "2026-01-01/10-00-00-000001" and t.run_name == "2026-01-01/10-00-00-000001/3"
    assert t.tags == ["mine", "concept:demo"]
    single = TrackerSettings(group="g", run_name="r")
    single.identify(tmp_path / "x")
    assert (single.group, single.run_name) == ("g", "r")


def test_a_resumed_run_continues_its_wandb_run(monkeypatch, tmp_path):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []
    original_init = wandb.init

    def init(*args, **kwargs):
        run = original_init(*args, **kwargs)
        calls.append((kwargs.get("id"), kwargs.get("resume"), run.id))
        return run

    monkeypatch.setattr(wandb, "init", init)
    base = [o for o in TINY_RUN if not o.startswith("logger")] + ["logger=wandb"]
    run(compose(*base, "train.max_steps=2", output_dir=tmp_path))
    run(compose(*base, "train.max_steps=3", "train.resume_from_checkpoint=latest", output_dir=tmp_path))
    (first_id, first_resume, first_run), (second_id, second_resume, second_run) = calls
    assert first_id is None and first_resume is None
    assert second_id == first_run and second_resume == "allow" and second_run == first_run
