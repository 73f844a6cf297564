"""A run folder from someone else is data: `evaluate`, `reproduce`, `generate` and `report` refuse a config
that names code the project does not ship (a nested `torch.load` of a pickle the folder carries, `os.system`
in `_args_`) before anything is built, and `reproduce` refuses a changed input it recorded the hash of.
Each refusal is one line; the payload, which would touch a marker file, never runs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO, TINY_RUN, Payload, compose
from ti_experiments.records import run_dir as run_files


def _crafted_run(tmp_path, how: str):
    """A run folder whose configs build what `how` says, with a pickle that touches tmp_path/pwned."""
    folder = tmp_path / "received"
    (folder / ".hydra").mkdir(parents=True)
    marker = tmp_path / "pwned"
    (folder / "payload.pt").write_bytes(pickle.dumps(Payload(marker)))
    cfg = OmegaConf.to_container(compose(*TINY_RUN, output_dir=folder), resolve=True)
    if how == "nested torch.load":
        cfg["model"]["tokenizer_kwargs"] = {"_target_": "torch.load", "f": str(folder / "payload.pt"),
                                            "weights_only": False}
    else:
        cfg["optimizer"]["_args_"] = [{"_target_": "os.system", "_args_": [f"touch {marker}"]}]
    for name in (run_files.COMPOSED_CONFIG, run_files.RESOLVED_CONFIG):
        (folder / name).write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    run_files.write_json(folder / run_files.RECORD, {"status": "completed"})
    run_files.write_concept(folder, "<demo-toy>", [__import__("torch").ones(1, 32)])
    return folder, marker


def _command(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("how", ["nested torch.load", "os.system in _args_"])
@pytest.mark.parametrize("module", ["ti_experiments.evaluate", "ti_experiments.reproduce", "ti_experiments.generate",
                                    "ti_experiments.report"])
def test_a_crafted_config_is_refused_and_its_payload_never_runs(tmp_path, module, how):
    folder, marker = _crafted_run(tmp_path, how)
    args = [str(folder), "a <demo-toy>", "--steps", "2"] if module.endswith("generate") else [str(folder)]
    done = _command(module, *args, cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "not one of the project's targets" in errors[0] and "; fix: " in errors[0]
    assert "Traceback" not in done.stderr and not marker.exists()
    assert not (tmp_path / "outputs").exists()  # reproduce started no run


def test_the_api_raises_tierror_for_a_crafted_or_broken_run(tmp_path):
    from ti_experiments.errors import TIError
    from ti_experiments.evaluate import evaluate_run

    folder, marker = _crafted_run(tmp_path, "nested torch.load")
    with pytest.raises(TIError, match="torch.load"):
        evaluate_run(folder)
    (folder / run_files.COMPOSED_CONFIG).write_text("model: {unclosed\n")
    with pytest.raises(TIError, match="is not a readable run config"):
        evaluate_run(folder)
    assert not marker.exists()


def test_reproduce_refuses_a_changed_init_from_and_says_how_to_accept_it(tmp_path):
    from ti_experiments.errors import TIError
    from ti_experiments.reproduce import check_inputs

    init = tmp_path / "start.safetensors"
    init.write_bytes(b"the first version")
    from ti_experiments.records.run_record import sha256

    run_files.write_json(tmp_path / run_files.RECORD, {"init_from": {"path": str(init), "sha256": sha256(init)}})
    check_inputs(tmp_path, [])  # unchanged: fine
    init.write_bytes(b"another version")
    with pytest.raises(TIError, match=r"has changed since the run.*fix: restore that file, or accept the difference: "
                                      r"python -m ti_experiments.reproduce .* --accept-changed-inputs"):
        check_inputs(tmp_path, [])
    check_inputs(tmp_path, [f"concept.init_from={init}"])  # another file named on purpose: the user's choice
    init.unlink()
    with pytest.raises(TIError, match="no longer exists"):
        check_inputs(tmp_path, [])


def test_reproduce_refuses_a_config_that_sets_hydra(tmp_path):
    folder = tmp_path / "received"
    (folder / ".hydra").mkdir(parents=True)
    cfg = OmegaConf.to_container(compose(*TINY_RUN, output_dir=folder), resolve=True)
    cfg["hydra"] = {"job": {"env_set": {"LD_PRELOAD": "/tmp/evil.so"}}}
    (folder / run_files.COMPOSED_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    done = _command("ti_experiments.reproduce", str(folder), cwd=tmp_path)
    assert done.returncode == 2 and "sets hydra, which a run's config never holds" in done.stderr, done.stderr[-2000:]
    assert json.dumps(cfg)  # the file was a real config, refused for its hydra node alone
