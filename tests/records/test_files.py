"""Atomic writes: a failed write leaves the previous file and no temporary, and says which file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from ti_experiments.errors import TIError
from ti_experiments.records.files import atomic_dir, atomic_path, folder_lock, write_text_atomic

HOLD = "import sys, time; from ti_experiments.records.files import folder_lock\n" \
       "with folder_lock(sys.argv[1], 'a test', 'wait'):\n    print('held', flush=True); time.sleep(600)"


def test_a_failed_write_keeps_the_previous_file_and_names_it(tmp_path):
    target = tmp_path / "result.txt"
    write_text_atomic(target, "good")
    with pytest.raises(OSError) as err, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")  # safetensors' way
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert target.read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_a_write_error_without_a_file_name_gets_the_target_name(tmp_path):
    target = tmp_path / "d"
    with pytest.raises(OSError) as err, atomic_dir(target):
        raise OSError(errno.EIO, "I/O error")
    assert err.value.filename == str(target) and not list(tmp_path.iterdir())


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="bug"), atomic_path(tmp_path / "x"):
        raise ValueError("bug")
    assert not list(tmp_path.iterdir())


def _holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_held_by_another_process_is_refused_at_once_and_free_after_kill_9(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(TIError, match=rf"^{tmp_path} is in use by a test \(process {proc.pid}\); fix: y$"):
            with folder_lock(tmp_path, "x", "y"):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with folder_lock(tmp_path, "x", "y"):  # the kernel released it with the process: nothing stale is left
        pass


def test_the_lock_is_held_against_the_same_process_too_and_released_after_the_block(tmp_path):
    with folder_lock(tmp_path, "the first", "wait"):
        with pytest.raises(TIError, match=r"in use by the first \(process \d+\); fix: y"):
            with folder_lock(tmp_path, "x", "y"):
                pass
    with folder_lock(tmp_path, "x", "y"):
        pass
