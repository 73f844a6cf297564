"""The Python API in one process, as a notebook uses it: repeated trainings are complete and independent,
and nothing of the process (directory, argv, Hydra, Accelerate, logging) is left changed."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from conftest import TINY_RUN, compose
from ti_experiments.errors import TIError

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each

QUICK = [*TINY_RUN, "train.max_steps=2", "train.save_steps=null", "train.checkpointing_steps=null"]


def test_the_package_exports_the_api_lazily():
    import subprocess

    code = "import sys, ti_experiments; print('torch' in sys.modules, callable(ti_experiments.train))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    from ti_experiments import RunResult, generate, train

    assert callable(generate) and callable(train) and RunResult.__name__ == "RunResult"


def _state():
    from accelerate.state import PartialState
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    return {"cwd": os.getcwd(), "argv": list(sys.argv), "global_hydra": GlobalHydra.instance().is_initialized(),
            "hydra_config": HydraConfig.initialized(), "accelerate": PartialState._shared_state != {},
            "handlers": list(logging.getLogger("ti_experiments").handlers),
            "level": logging.getLogger("ti_experiments").level}


def test_train_twice_in_one_process_with_different_overrides(tmp_path, monkeypatch, tiny_model_path):
    from ti_experiments import train

    monkeypatch.chdir(tmp_path)
    before = _state()
    first = train(*QUICK)
    second = train(*QUICK, "concept.num_vectors=2", "seed=1")
    monkeypatch.setenv("TI_OUTPUT_ROOT", str(tmp_path / "shared"))  # as for the command line
    third = train(*QUICK)
    assert _state() == before
    assert third.run_dir.is_relative_to(tmp_path / "shared" / "runs")

    runs = (first, second, third)
    assert len({r.run_dir for r in runs}) == 3
    for result in runs[:2]:  # the command line's default place, under the current directory
        assert result.run_dir.is_relative_to(tmp_path / "outputs" / "runs")
    for result in runs:  # each complete
        assert json.loads((result.run_dir / "run.json").read_text())["status"] == "completed"
        assert result.summary == json.loads((result.run_dir / "summary.json").read_text())
        assert result.summary["steps"] == 2 and result.embedding.is_file()
        assert "${hydra:runtime.output_dir}" in (result.run_dir / ".hydra" / "config.yaml").read_text()
        log = (result.run_dir / "ti.log").read_text()
        assert "done: 2 steps" in log and log.count("done:") == 1  # its own lines only
    assert json.loads((second.run_dir / "run.json").read_text())["overrides"][-2:] == ["concept.num_vectors=2",
                                                                                       "seed=1"]
    from safetensors.torch import load_file

    assert load_file(second.embedding)["<demo-toy>"].shape[0] == 2
    # independent: the third run repeats the first exactly, whatever ran in between
    assert first.summary["learned_embeds_sha256"] == third.summary["learned_embeds_sha256"]
    assert first.summary["learned_embeds_sha256"] != second.summary["learned_embeds_sha256"]
    resolved = (first.run_dir / "resolved_config.yaml").read_text()
    assert f"output_dir: {first.run_dir}" in resolved


def test_train_from_a_composed_config_into_a_chosen_folder(tmp_path, tiny_model_path):
    from ti_experiments import train

    cfg = compose(*QUICK)  # paths.output_dir is ${hydra:runtime.output_dir}: train() picks the folder
    result = train(config=cfg, output_dir=tmp_path / "mine")
    assert result.run_dir == (tmp_path / "mine").absolute() and result.summary["steps"] == 2
    with pytest.raises(TIError, match="both overrides and a config"):
        train("seed=1", config=cfg)


@pytest.mark.parametrize("overrides,message", [
    (["model=tiny"], "no concept chosen"),
    (["+concept=demo", "model=nope"], "model/nope"),
    (["+concept=demo", "train.max_stepz=3"], "train.max_stepz"),
])
def test_train_errors_are_tierrors(tmp_path, monkeypatch, overrides, message):
    from hydra.core.global_hydra import GlobalHydra

    from ti_experiments import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TIError, match=message) as info:
        train(*overrides, "logger=none")
    assert "\n" not in str(info.value) and "; fix: " in str(info.value)
    assert not GlobalHydra.instance().is_initialized()


def test_train_into_the_folder_of_another_run_is_refused_and_changes_nothing(tmp_path, tiny_model_path):
    from ti_experiments import train

    first = train(*QUICK, output_dir=tmp_path / "run").run_dir
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(TIError, match=rf"^{first} already holds a run \(run.json: completed\)"):
        train(*QUICK, "seed=5", output_dir=first)
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and p.name != ".lock"} == before
