"""Messages no user can act on stay off the console; others of the same libraries still show."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest


def test_the_torchvision_fallback_notice_is_dropped_and_nothing_else():
    import ti_experiments  # noqa: F401 - installs the filters

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.utils.import_utils")  # transformers may stop propagation
    logger.addHandler(handler)
    try:
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to `X`")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]


@pytest.mark.slow
def test_importing_the_pipelines_prints_nothing():
    code = "import ti_experiments; from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "torchvision" not in result.stderr, result.stderr
