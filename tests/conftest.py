"""Shared fixtures: one tiny model per test session, configs composed like the CLI composes them."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# One cache for the whole session (and the subprocesses it starts): the tiny model is built once.
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="ti-test-cache-"))
os.environ.setdefault("TI_EXPERIMENTS_CACHE", str(_SESSION_CACHE))
os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
# the workshop (ti_experiments_dev) is run from the checkout, not installed: subprocesses find it too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH")]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the suite runs trainings side by side on purpose: a busy-CPU warning in every one says nothing
os.environ.setdefault("TI_EXPERIMENTS_BUSY_WARNING", "0")
# Under pytest-xdist (`-n 2`) each worker process gets one torch thread, and so do the subprocesses it
# starts: OpenMP threads of two processes spinning on the same cores slow both down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

from ti_experiments.config import CONF_DIR  # noqa: E402 - after the environment above

REPO = Path(__file__).resolve().parent.parent

# A short, fast tiny run: the overrides every training test starts from.
TINY_RUN = [
    "+concept=demo", "model=tiny", "hardware=cpu", "logger=none", "train.max_steps=4", "train.batch_size=1",
    "train.save_steps=2", "train.checkpointing_steps=2", "data.repeats=2", "validation.enabled=false",
]

# The same run on the tiny SDXL model (bf16 autocast on CPU, SDXL's default precision).
TINY_SDXL_RUN = ["model=tiny_sdxl" if o == "model=tiny" else o for o in TINY_RUN]


class Payload:
    """A hostile pickle: whatever unpickles it runs `touch MARKER`. Tests assert the marker never appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def compose(*overrides: str, output_dir: Path | None = None):
    """The config the CLI composes from these overrides (the package's own `compose`)."""
    from ti_experiments.config import compose as ti_compose

    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    return ti_compose([*overrides, *extra])


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["TI_EXPERIMENTS_CACHE"])


@pytest.fixture(scope="session")
def tiny_model_path(cache_dir) -> Path:
    from ti_experiments.models.tiny import ensure_tiny_model

    path = Path(compose("model=tiny").model.pretrained_model_name_or_path)
    assert ensure_tiny_model(path.parent) == path
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_path(cache_dir) -> Path:
    from ti_experiments.models.tiny_sdxl import ensure_tiny_sdxl_model

    path = Path(compose("model=tiny_sdxl").model.pretrained_model_name_or_path)
    assert ensure_tiny_sdxl_model(path.parent) == path
    return path


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 300):
    """The real command line in a subprocess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "ti_experiments", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def silent_server():
    """The URL of a local address that takes connections and never answers: a network that hangs."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


@pytest.fixture
def answering_server():
    """The URL of a local web server that answers every request with 404."""
    import http.server
    import threading

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
