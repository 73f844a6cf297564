"""Sweeps on a real SLURM cluster (scripts/slurm_cluster.sh: one node on this machine, with accounting):
each job is a SLURM job, a job SLURM takes away resumes where it stopped, and a job SLURM ends is a failed
job in the report and the exit code. Skipped when no test cluster runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLUSTER = REPO / "scripts" / "slurm_cluster.sh"
SLURM_DIR = Path(os.environ.get("TI_SLURM_DIR", "/tmp/ti-slurm"))
# 40 short steps with a checkpoint every 5: long enough to be taken away mid-run, seconds in all
RUN = ["+concept=demo", "model=tiny", "hardware=cpu", "logger=none", "evaluation=none", "validation.enabled=false",
       "train.batch_size=1", "data.repeats=2", "train.max_steps=40", "train.checkpointing_steps=5",
       "train.save_steps=null"]
# what fits the test node (2 cores, no GPU)
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


@pytest.fixture(scope="session")
def slurm_cluster():
    """The test cluster's SLURM_CONF; the tests are skipped, saying how to start it, when it does not run."""
    if not CLUSTER.is_file() or subprocess.run([str(CLUSTER), "status"], capture_output=True).returncode != 0:
        pytest.skip(f"no test SLURM cluster runs: start one with `{CLUSTER.relative_to(REPO)} install` (once, as "
                    f"root) and `{CLUSTER.relative_to(REPO)} start`")
    return SLURM_DIR / "slurm.conf"


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return os.environ.copy()


class Sweep:
    """A multirun started in the background, so that the test can take its jobs away while they run."""

    def __init__(self, sweep_dir: Path, *args: str):
        self.dir = sweep_dir
        command = [sys.executable, "-m", "ti_experiments", "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        """A test that failed leaves nothing running: the sweep's process and its SLURM jobs end."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        jobs = {p.name.split("_")[0] for p in (self.dir / ".submitit").glob("[0-9]*") if p.is_dir()}
        if jobs:
            subprocess.run(["scancel", *sorted(jobs)], capture_output=True, timeout=60)

    def job_id(self, num: int) -> str:
        """SLURM's id of job #num (an array task), once submitit has written the job's folder."""
        found = self.wait_for(lambda: sorted((self.dir / ".submitit").glob(f"*_{num}")), f"job {num} submitted")
        return found[0].name

    def wait_for(self, condition, what: str, timeout: float = 240):
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                pytest.fail(f"the sweep ended before {what}:\n{self.process.stdout.read()[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"no {what} in {timeout}s")

    def take_away(self, actions: dict) -> None:
        """actions: job number -> (condition on its run directory, command taking it away); each command runs
        once, as soon as its condition holds (the jobs run two at a time, in any order)."""
        pending = dict(actions)

        def step():
            for num, (condition, command) in list(pending.items()):
                if condition(self.dir / str(num)):
                    _slurm(*command(self.job_id(num)))
                    del pending[num]
            return not pending

        self.wait_for(step, f"the moments to take jobs {sorted(actions)} away")

    def finish(self, timeout: float = 420) -> tuple[int, str]:
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the sweep did not end in {timeout}s: it waits for a job that will not come back")
        return self.process.returncode, output


def _checkpointed(run_dir: Path) -> bool:
    return (run_dir / "checkpoint-5").is_dir()


def _in_second_epoch(run_dir: Path) -> bool:
    """Past step 12, the first epoch (6 images x 2 repeats): a resume must draw the second epoch's items."""
    return (run_dir / "checkpoint-15").is_dir()


def _not_training_yet(run_dir: Path) -> bool:
    """The job runs (its record is written) and has not trained a step: it has no checkpoint to resume."""
    return (run_dir / "run.json").is_file() and not (run_dir / "metrics.jsonl").exists()


def _leaves(run_dir: Path) -> list[str]:
    """What a run leaves, but checkpoints and step files (an interruption adds one of each)."""
    return sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("checkpoint-") and "-steps-" not in p.name)


def _slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60).stdout


def _states(job_id: str) -> list[str]:
    """Every state sacct has for a job (a requeued job has one line per run), oldest first."""
    out = _slurm("sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _record(sweep: Path, num: int) -> dict:
    return json.loads((sweep / str(num) / "run.json").read_text())


def _embedding(run_dir: Path):
    return load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"]


def test_a_slurm_sweep_is_the_local_sweep_and_jobs_taken_away_resume_bit_for_bit(tmp_path, slurm_env):
    """Job 0 is requeued by the admin (scontrol requeue: SIGTERM), job 1 gets submitit's preemption signal
    (USR2: a clean stop, then submitit requeues it), jobs 2 and 3 get the same while they start, before
    their first step; all four end with the embedding of the same sweep run locally, bit for bit."""
    sweep = tmp_path / "slurm"
    jobs = "concept.num_vectors=1,2,3,4"
    local = tmp_path / "local"
    with Sweep(sweep, *RUN, *ON_SLURM, jobs) as run, Sweep(local, *RUN, jobs) as reference:
        ids = [run.job_id(n) for n in range(4)]
        run.take_away({0: (_in_second_epoch, lambda job: ["scontrol", "requeue", job]),
                       1: (_in_second_epoch, lambda job: ["scancel", "--signal=USR2", job]),
                       2: (_not_training_yet, lambda job: ["scontrol", "requeue", job]),
                       3: (_not_training_yet, lambda job: ["scancel", "--signal=USR2", job])})
        code, output = run.finish()
        assert code == 0, output[-4000:]
        code, output = reference.finish()
        assert code == 0, output[-4000:]
    for num in range(4):
        assert _embedding(sweep / str(num)).numpy().tobytes() == _embedding(local / str(num)).numpy().tobytes()
        assert _record(sweep, num)["status"] == "completed"
        assert _states(ids[num])[-1] == "COMPLETED"
    assert all(len(_states(i)) >= 2 and _states(i)[0] == "REQUEUED" for i in ids)  # each ran twice, in sacct
    assert _leaves(sweep / "1") == _leaves(local / "1")
    assert (sweep / "report.md").read_text().count("| completed |") == 4

    requeued, preempted, *early = (_record(sweep, n) for n in range(4))
    assert requeued["slurm"]["job_id"] == ids[0] and requeued["slurm"]["restarts"] >= 1
    [attempt] = requeued["attempts"]
    assert attempt["status"] == "interrupted" and "SIGTERM" in attempt["error"]
    assert requeued["resumed_from"].endswith("checkpoint-" + attempt["error"].split("at step ")[1].split(";")[0])
    assert "SIGUSR2" in preempted["attempts"][0]["error"] and preempted["resumed_from"]
    # taken away while starting: stopped at once (submitit's own handler would have ignored SIGTERM and let
    # the job train until SLURM killed it), and started over
    for record, name in zip(early, ("SIGTERM", "SIGUSR2")):
        [attempt] = record["attempts"]
        assert attempt["status"] == "interrupted"
        assert f"stopped by {name} outside the training steps" in attempt["error"], attempt
        assert record["resumed_from"] is None
    assert not any((sweep / "2").glob("*-steps-*")) and not any((sweep / "3").glob("*-steps-*"))


def test_jobs_slurm_ends_are_failed_jobs_with_their_reason_and_log(tmp_path, slurm_env):
    """A job that raises, a cancelled job and a job over its memory are failed in run.json, the report and
    the exit code; the completed job's result is kept, and the sweep does not wait for the ones SLURM ended."""
    sweep, greedy = tmp_path / "sweep", tmp_path / "greedy"
    # beside it, a job with 200 MB for a run that needs about 500 MB: SLURM kills it
    with Sweep(sweep, *RUN, *ON_SLURM, "concept.initializer_token=toy,zqxvbn,cat") as run, \
            Sweep(greedy, *RUN, *ON_SLURM, "hydra.launcher.mem_gb=null",
                  "+hydra.launcher.additional_parameters.mem=200M") as over_memory:
        cancelled = run.job_id(0)
        run.take_away({0: (_checkpointed, lambda job: ["scancel", job])})
        code, output = run.finish()
        oom_code, oom_output = over_memory.finish()
    assert oom_code == 1 and "1 job(s) of the sweep failed: 0" in oom_output, oom_output[-4000:]
    oom = _record(greedy, 0)["error"]
    assert "ended FAILED: Exceeded job memory limit" in oom["message"] and Path(oom["log"]).is_file()
    assert code == 1, output[-4000:]
    assert "2 job(s) of the sweep failed: 0, 1" in output
    assert [_record(sweep, n)["status"] for n in range(3)] == ["failed", "failed", "completed"]
    assert _states(cancelled)[-1] == "CANCELLED"
    error = _record(sweep, 0)["error"]
    assert f"SLURM job {cancelled} ended CANCELLED" in error["message"] and Path(error["log"]).is_file()
    assert "zqxvbn" in _record(sweep, 1)["error"]["message"]
    report = (sweep / "report.md").read_text()
    assert f"- 0: failed: SLURM job {cancelled} ended CANCELLED" in report and "(log: " in report
    assert "- 1: failed: " in report and "zqxvbn" in report.split("- 1: failed: ")[1]
    assert (sweep / "2" / "learned_embeds.safetensors").is_file()


@pytest.mark.skipif(not os.environ.get("TI_SLURM_LONG"), reason="about 2 minutes (SLURM's time limits are whole "
                    "minutes): set TI_SLURM_LONG=1 to run it")
def test_a_job_at_its_time_limit_stops_cleanly_is_requeued_and_resumes(tmp_path, slurm_env):
    """A two-minute limit with USR2 30 s before it (SLURM sends it up to 30 s early): the job stops cleanly
    at the signal, submitit requeues it as timed out, and it resumes from the checkpoint of that step."""
    sweep = tmp_path / "sweep"
    endless = [a for a in RUN if not a.startswith(("train.max_steps", "train.checkpointing"))]
    with Sweep(sweep, *endless, "train.max_steps=1000000", "train.checkpointing_steps=1000", *ON_SLURM,
               "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30", "concept.num_vectors=1") as run:
        resumed = run.wait_for(lambda: _record(sweep, 0).get("resumed_from") if (sweep / "0" / "run.json").is_file()
                               else None, "the job resumed after its time limit", timeout=300)
    record = _record(sweep, 0)
    job = record["slurm"]["job_id"]  # a sweep of one job is a plain job, not an array
    [attempt] = record["attempts"]
    assert attempt["status"] == "interrupted" and "stopped by SIGUSR2" in attempt["error"], attempt
    assert resumed.endswith("checkpoint-" + attempt["error"].split("at step ")[1].split(";")[0])
    assert "this job is timed-out" in (sweep / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert _states(job)[0] == "REQUEUED"
