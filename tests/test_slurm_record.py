"""Without a cluster: how a run knows its own SLURM job again, and what a job SLURM ended leaves in run.json
(tests/test_slurm.py runs the same on the test cluster)."""

from __future__ import annotations

import json
import signal

import pytest

from ti_experiments import slurm
from ti_experiments.errors import Interrupted
from ti_experiments.records.run_record import earlier_attempts, record_failure
from ti_experiments.records.run_dir import claim, read_record, write_json


def _as_array_task(monkeypatch, job: str, task: str, restarts: int = 0) -> None:
    for name, value in {"SLURM_JOB_ID": "99", "SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": task,
                        "SLURM_RESTART_COUNT": str(restarts), "SLURMD_NODENAME": "n1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)


def test_a_requeued_job_finds_its_own_unfinished_run_and_may_continue_it(tmp_path, monkeypatch):
    run_dir = tmp_path / "0"
    run_dir.mkdir()
    write_json(run_dir / "run.json", {"status": "interrupted", "slurm": {"job_id": "7_0"}})
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.job_identity() is None and slurm.own_record(run_dir) is None  # not under SLURM
    _as_array_task(monkeypatch, "7", "1")
    assert slurm.own_record(run_dir) is None  # another task's run
    _as_array_task(monkeypatch, "7", "0")
    assert slurm.own_record(run_dir) is None  # the job's first attempt: another command's run
    _as_array_task(monkeypatch, "7", "0", restarts=1)
    assert slurm.job_identity() == {"job_id": "7_0", "restarts": 1, "node": "n1"}
    assert slurm.own_record(run_dir)["status"] == "interrupted"
    with claim(run_dir, None, own=True):  # the folder holds a run, and it is this one
        pass


def test_a_job_slurm_ended_is_failed_with_its_reason_and_log_but_a_completed_run_stays(tmp_path):
    never_started = tmp_path / "0"
    assert record_failure(never_started, "SLURM job 7_0 ended CANCELLED", log="/logs/7_0.err", overrides=["a=1"])
    record = read_record(never_started)
    assert record["status"] == "failed" and record["overrides"] == ["a=1"]
    assert record["error"]["message"] == "SLURM job 7_0 ended CANCELLED" and record["error"]["log"] == "/logs/7_0.err"

    done = tmp_path / "1"
    done.mkdir()
    write_json(done / "run.json", {"status": "completed", "error": None})
    before = (done / "run.json").read_text()
    assert not record_failure(done, "SLURM job 7_1 ended NODE_FAIL")
    assert (done / "run.json").read_text() == before


def test_each_attempt_of_a_run_is_kept_and_one_killed_outright_is_an_interruption():
    first = {"status": "interrupted", "start_time": "t0", "end_time": "t1", "slurm": {"job_id": "7_0", "restarts": 0},
             "error": {"message": "stopped by SIGTERM at step 5; ..."}}
    second = {"status": "running", "start_time": "t2", "end_time": None, "resumed_from": "/r/checkpoint-5",
              "attempts": earlier_attempts(first)}
    attempts = earlier_attempts(second)
    assert [a["status"] for a in attempts] == ["interrupted", "interrupted"]
    assert attempts[0]["error"].startswith("stopped by SIGTERM") and attempts[0]["slurm"]["job_id"] == "7_0"
    assert attempts[1]["error"] == "killed without a clean stop" and attempts[1]["resumed_from"] == "/r/checkpoint-5"
    assert json.loads(json.dumps(attempts)) == attempts


def test_a_stop_outside_the_training_steps_ends_the_job_at_once_and_is_handed_to_submitit(monkeypatch):
    """submitit ignores SIGTERM: from the job's entry the job's own handler stops it at once (nothing to
    save before the steps), the loop's handler stops it at the next step, and after either stop submitit's
    handlers are back and get the preemption signal (their requeue)."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="stopped by SIGTERM outside the training steps") as caught:
        with slurm.job_signals():  # not a SLURM job: the stop is only raised
            signal.raise_signal(signal.SIGTERM)
            pytest.fail("the job went on after SIGTERM")
    assert caught.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before

    from ti_experiments.training.signals import StopRequests

    _as_array_task(monkeypatch, "7", "0")
    monkeypatch.setenv("SUBMITIT_FOLDER", "/submitit")
    requeued = []

    def submitit_requeue(signum, frame):  # what submitit's USR2 handler does: requeue, then exit
        requeued.append(signum)
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        with pytest.raises(SystemExit) as ended:
            with slurm.job_signals():
                with StopRequests() as stop:  # the training steps: the stop waits for the step's end
                    signal.raise_signal(signal.SIGUSR2)
                    assert stop.signum == signal.SIGUSR2 and not requeued
                raise Interrupted("stopped by SIGUSR2 at step 3", stop.signum)
        assert ended.value.code == -1 and requeued == [signal.SIGUSR2]
        with pytest.raises(SystemExit) as ended:  # SIGTERM: SLURM decides; the process only ends
            with slurm.job_signals():
                signal.raise_signal(signal.SIGTERM)
        assert ended.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_that_a_library_wrapped_in_its_own_error_is_still_a_stop(monkeypatch):
    """SIGUSR2 while diffusers imports lazily (the test cluster caught it): Python 3.11 wraps the handler's
    `Interrupted` raised while a class is made, diffusers wraps that in a RuntimeError, and the model loader
    in a TIError. The run is recorded as interrupted and the stop reaches submitit, not a failure."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from ti_experiments import experiment
    from ti_experiments.errors import TIError

    def loading(*_):
        try:
            try:
                signal.raise_signal(signal.SIGUSR2)
            except BaseException as exc:  # what Python 3.11 does around a class's __set_name__
                raise RuntimeError("Error calling __set_name__ on 'Field' instance 'is_sharded'") from exc
        except Exception as exc:
            raise TIError("could not load the model folder: Failed to import diffusers.models (look up)",
                          "set model.pretrained_model_name_or_path") from exc

    finished = []
    record = SimpleNamespace(finish=lambda status, exc=None: finished.append((status, exc)), note=lambda **_: None)
    monkeypatch.setattr(experiment, "start_record", lambda *_: None)
    monkeypatch.setattr(experiment, "_train", loading)
    settings = SimpleNamespace(train=SimpleNamespace(resume_from_checkpoint=None), hub=None)
    with pytest.raises(Interrupted, match="stopped by SIGUSR2 outside the training steps") as caught:
        with slurm.job_signals():  # not under submitit: the stop is only raised
            experiment._run(settings, None, record, OmegaConf.create({}), None)
    assert caught.value.signum == signal.SIGUSR2 and isinstance(caught.value.__cause__, TIError)
    assert [status for status, _ in finished] == ["interrupted"]
    # a failure with no signal behind it stays a failure (the stop is forgotten when the job's handlers go)
    finished.clear()
    with pytest.raises(TIError):
        with slurm.job_signals():
            monkeypatch.setattr(experiment, "_train", lambda *_: (_ for _ in ()).throw(TIError("broken", "mend it")))
            experiment._run(settings, None, record, OmegaConf.create({}), None)
    assert [status for status, _ in finished] == ["failed"]
