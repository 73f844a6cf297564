"""The experiment's own checks, before any model is loaded."""

from __future__ import annotations

import pytest

from conftest import TINY_RUN, compose
from ti_experiments.errors import TIError
from ti_experiments.experiment import run


def test_a_missing_folder_outside_the_cache_is_an_error_not_filled(tmp_path):
    folder = tmp_path / "my-typo"
    with pytest.raises(TIError, match="does not exist"):
        run(compose(*TINY_RUN, f"concept.train_data_dir={folder}", output_dir=tmp_path / "run"))
    assert not folder.exists()


def test_no_concept_and_bad_property(tmp_path):
    with pytest.raises(TIError, match=r"\+concept=NAME"):
        run(compose("model=tiny", output_dir=tmp_path))
    with pytest.raises(TIError, match="learnable_property"):
        run(compose(*TINY_RUN, "concept.learnable_property=person", output_dir=tmp_path))


def test_a_full_disk_suggests_a_resume_only_when_there_is_a_checkpoint(tmp_path):
    import errno

    from ti_experiments.records import run_dir as run_files
    from ti_experiments.experiment import disk_full

    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run.json"))
    assert "start the run again in a new folder" in str(disk_full(exc, tmp_path))
    run_files.checkpoint_dir(tmp_path, 2).mkdir()
    (run_files.checkpoint_dir(tmp_path, 2) / run_files.CHECKPOINT_STATE).write_text("{}")
    assert f"hydra.run.dir={tmp_path} train.resume_from_checkpoint=latest" in str(disk_full(exc, tmp_path))
    assert disk_full(OSError(errno.EACCES, "denied", "x"), tmp_path) is None
