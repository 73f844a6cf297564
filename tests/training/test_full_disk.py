"""A disk that fills up while a run saves: one clear line, every file already written survives whole,
and once there is space again the run resumes and finishes. A real process on a real full filesystem
(a small tmpfs in a private mount namespace; skipped where the machine does not allow one)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = r"""
set -u
mount -t tmpfs -o size=16m tmpfs "$DISK" || exit 77
run() { "$PY" -m ti_experiments $ARGS hydra.run.dir="$DISK/run" "$@"; }
run > "$LOGS/first.txt" 2>&1 &
pid=$!
until [ -d "$DISK/run/checkpoint-4" ] || ! kill -0 $pid 2>/dev/null; do sleep 0.05; done
dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null   # until the disk is full
wait $pid; echo $? > "$LOGS/first.rc"
cp -a "$DISK/run" "$LOGS/after_full"                 # what the full disk left behind, for the test
rm "$DISK/filler"
run train.resume_from_checkpoint=latest > "$LOGS/second.txt" 2>&1; echo $? > "$LOGS/second.rc"
cp -a "$DISK/run" "$LOGS/resumed"
"""


def test_a_full_disk_while_saving_loses_nothing_and_the_run_resumes(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir(), logs.mkdir()
    args = ("+concept=demo model=tiny hardware=cpu logger=none validation.enabled=false data.repeats=2 "
            "train.max_steps=10 train.save_steps=1 train.checkpointing_steps=2")
    env = {"DISK": str(disk), "LOGS": str(logs), "PY": sys.executable, "ARGS": args}
    cmd = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " bash -c " + shlex.quote(SCRIPT)
    done = subprocess.run(["unshare", "-Urm", "bash", "-c", cmd], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    if done.returncode == 77 or not (logs / "first.rc").exists():
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr.strip()[:200]}")

    first = (logs / "first.txt").read_text()
    assert (logs / "first.rc").read_text().strip() == "2", first[-3000:]
    errors = [line for line in first.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0], first[-3000:]
    assert "resume_from_checkpoint=latest" in errors[0]
    assert "Traceback" not in first
    left = logs / "after_full"
    assert not list(left.rglob("*.tmp*")), sorted(left.rglob("*"))
    saved = sorted(left.glob("learned_embeds-steps-*.safetensors"))
    assert len(saved) >= 4, sorted(left.iterdir())
    for path in saved:  # every file with a final name is whole
        assert next(iter(load_file(path).values())).isfinite().all()
    for checkpoint in left.glob("checkpoint-*"):
        assert (checkpoint / "trainer_state.json").is_file(), sorted(checkpoint.iterdir())
    json.loads((left / "run.json").read_text())

    second = (logs / "second.txt").read_text()
    assert (logs / "second.rc").read_text().strip() == "0", second[-3000:]
    resumed = logs / "resumed"
    assert (resumed / "learned_embeds.safetensors").is_file()
    assert json.loads((resumed / "run.json").read_text())["status"] == "completed"
