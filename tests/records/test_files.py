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


# --- nothing is written through a link; files get the user's umask ------------------------------------------


def _victim(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    return victim, folder


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path):
    victim, folder = _victim(tmp_path)
    (folder / ".lock").symlink_to(victim)
    with pytest.raises(TIError, match=r"\.lock is a symbolic link.*nothing was written through it; fix: remove"):
        with folder_lock(folder, "a test", "wait"):
            pass
    assert victim.read_text() == "the user's file\n"


def test_a_hard_linked_lock_is_refused_and_its_file_untouched(tmp_path):
    victim, folder = _victim(tmp_path)
    os.link(victim, folder / ".lock")
    with pytest.raises(TIError, match="is not a plain file of this folder \\(a hard link\\)"):
        with folder_lock(folder, "a test", "wait"):
            pass
    assert victim.read_text() == "the user's file\n"


def test_an_atomic_write_onto_a_link_is_refused(tmp_path):
    victim, folder = _victim(tmp_path)
    (folder / "run.json").symlink_to(victim)
    with pytest.raises(TIError, match="run.json is a symbolic link"):
        write_text_atomic(folder / "run.json", "{}")
    assert victim.read_text() == "the user's file\n" and (folder / "run.json").is_symlink()
    assert not list(folder.glob(".*tmp"))


def test_the_log_handler_never_writes_through_a_link(tmp_path):
    import logging

    from ti_experiments.records.files import NoFollowFileHandler

    victim, folder = _victim(tmp_path)
    (folder / "ti.log").symlink_to(victim)
    handler = NoFollowFileHandler(folder / "ti.log")
    handler.emit(logging.makeLogRecord({"msg": "a line"}))
    handler.close()
    assert victim.read_text() == "the user's file\n"
    plain = NoFollowFileHandler(folder / "own.log")
    plain.emit(logging.makeLogRecord({"msg": "a line"}))
    plain.close()
    assert (folder / "own.log").read_text() == "a line\n"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_written_get_the_users_umask_safetensors_too(tmp_path, umask):
    import torch

    from ti_experiments.models.embeddings import save_learned_embeds

    old = os.umask(umask)
    try:
        save_learned_embeds(tmp_path / "e.safetensors", "<t>", torch.ones(1, 4))
        write_text_atomic(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    for name in ("e.safetensors", "t.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_cache_folder_finished_first_by_another_process_is_kept(tmp_path):
    """Several sweep jobs fill an empty cache at once: the first copy stays, the others are dropped, no error."""
    from ti_experiments.records.files import atomic_dir

    target = tmp_path / "concepts" / "demo"
    with atomic_dir(target, keep_existing=True) as mine:
        (mine / "a.png").write_text("mine")
        with atomic_dir(target, keep_existing=True) as theirs:  # another process finishes first
            (theirs / "a.png").write_text("theirs")
    assert (target / "a.png").read_text() == "theirs" and sorted(p.name for p in target.parent.iterdir()) == ["demo"]
    with atomic_dir(target) as replacing:  # without keep_existing the new copy replaces the folder
        (replacing / "a.png").write_text("new")
    assert (target / "a.png").read_text() == "new"
