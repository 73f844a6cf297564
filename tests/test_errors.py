"""The one-line error machinery: what becomes a user's line, and what stays a bug's traceback."""

from __future__ import annotations

import errno

import pytest
import torch

from ti_experiments.errors import TIError, hydra_error, user_message


@pytest.mark.parametrize("exc", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                              "can't allocate memory: you tried to allocate 81920000000 bytes")])
def test_running_out_of_memory_is_a_users_line_with_a_fix(exc):
    line = user_message(exc)
    assert line.startswith("error: out of memory (") and "; fix: use a smaller data.resolution" in line
    assert "\n" not in line


def test_a_bug_keeps_its_traceback_and_a_tierror_is_its_text():
    assert user_message(RuntimeError("shape mismatch")) is None
    assert user_message(TIError("a problem", "a fix")) == "error: a problem; fix: a fix"
    assert user_message(OSError(errno.EACCES, "Permission denied", "/x")).endswith("a command: its --out)")


def test_no_hydra_error_sends_the_user_to_the_readme():
    from hydra.errors import OverrideParseException

    for text in ("LexerNoViableAltException: --x", "something Hydra never said before"):
        error = hydra_error(OverrideParseException(override="--x", message=text))
        assert "README" not in str(error) and "--cfg job" in error.fix


def test_the_cause_of_an_error_is_its_first_readable_line_through_its_chain():
    from ti_experiments.errors import cause

    try:
        try:
            raise ConnectionError("Failed to resolve 'huggingface.co' (no network)\nmore detail")
        except ConnectionError as inner:
            raise OSError(None, None) from inner  # str(): "[Errno None] None"
    except OSError as outer:
        assert cause(outer) == "Failed to resolve 'huggingface.co' (no network)"
    assert cause(OSError(None, "timed out")) == "timed out"
    assert cause(OSError()) == "OSError"  # nothing anywhere says more than its class
    assert cause(ValueError("x" * 500), limit=10) == "x" * 10
    lazy = RuntimeError("Failed to import diffusers.models.vae because of the following error (look up to see its "
                        "traceback):\nNo module named 'scipy'")
    assert cause(lazy).endswith("(look up to see its traceback): No module named 'scipy'")
