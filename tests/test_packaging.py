"""The package installs like a library: a wheel built from the repository, in a fresh virtual environment,
runs the demo from a directory that is not the checkout, with the configs and sweep files it carries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

# the toy world demo: the wheel must carry its model and judge too
DEMO = ["+concept=demo", "hardware=cpu", "logger=none", "train.max_steps=2", "validation.enabled=false"]


def _run(*args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory, tiny_model_path):
    """A fresh virtual environment with the wheel installed (torch & co. from the system's site-packages)."""
    work = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", work / "dist", REPO,
         cwd=work)
    (wheel,) = (work / "dist").glob("ti_experiments-*.whl")
    _run(sys.executable, "-m", "venv", "--system-site-packages", work / "venv", cwd=work)
    python = work / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=work)
    return python


def test_the_wheel_carries_its_configs_and_runs_the_demo_anywhere(venv_python, tmp_path):
    where = _run(venv_python, "-c", "import ti_experiments.config as c; print(c.__file__); print(c.CONF_DIR); "
                 "print(c.SWEEPS_DIR)", cwd=tmp_path).stdout.split()
    assert all("/venv/" in line and "site-packages/ti_experiments" in line for line in where), where
    _run(venv_python, "-m", "ti_experiments", *DEMO, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert (tmp_path / "run" / "learned_embeds.safetensors").is_file()
    # a sweep file by name, from the package, with no sweeps/ folder here
    shown = _run(venv_python, "-m", "ti_experiments", "--config-name", "num_vectors", "+concept=demo", "--cfg",
                 "hydra", cwd=tmp_path).stdout
    assert "concept.num_vectors: 1,2,4,8" in shown
