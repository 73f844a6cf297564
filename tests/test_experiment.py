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
