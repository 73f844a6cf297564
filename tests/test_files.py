"""Atomic writes: a failed write leaves the previous file and no temporary, and says which file."""

from __future__ import annotations

import errno

import pytest

from ti_experiments.files import atomic_dir, atomic_path, write_text_atomic


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
