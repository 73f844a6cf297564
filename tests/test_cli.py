"""The real command line on bad input: one clean `error: <problem>; fix: <fix>` line, exit code 2,
no traceback, and no embedding written. Every case is a subprocess (~5 s of imports each)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli

pytestmark = pytest.mark.slow

# A short tiny-model run (batch 1: the demo preset's batch 8 only costs time here); each case adds the one
# bad override it is about.
BASE = ["+concept=demo", "model=tiny", "hardware=cpu", "logger=none", "train.max_steps=2", "train.batch_size=1"]

# A concept whose images are the user's own (source: null, as the README suggests); with +concept=demo a
# missing or empty folder is filled with demo images by design (README: `source`, where images come from
# when the folder is empty), so it would not be an error.
OWN_FOLDER = ["+concept=my_style"] + BASE[1:]


def _run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def _cli(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, f"hydra.run.dir={_run_dir(tmp_path)}", timeout=timeout)


def _show(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\n--- stderr ---\n{result.stderr[-4000:]}\n--- stdout ---\n{result.stdout[-2000:]}"


def assert_clean_error(result: subprocess.CompletedProcess, run_dir: Path, *needles: str) -> str:
    """Exit 2, exactly one `error: <problem>; fix: <fix>` line on stderr naming the problem, no
    traceback anywhere, no learned embedding in the run directory. Returns the error line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, _show(result)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, _show(result)
    assert "Error executing job" not in result.stderr, _show(result)
    line = lines[0]
    assert "fix:" in line, line
    # One problem, one fix: nothing echoed twice, no Hydra wrapper around our own message.
    assert line.count("fix:") == 1 and re.fullmatch(r"error: \S.*; fix: \S.*", line), line
    assert "Error in call to target" not in line, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in: {line}"
    assert "Traceback" not in output, _show(result)
    assert not list(run_dir.rglob("learned_embeds*.safetensors")), sorted(run_dir.rglob("*"))
    return line


# ---------------------------------------------------------------- configuration and concept values

@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param(["model=tiny", "hardware=cpu", "logger=none"], ["no concept", "+concept="],
                     id="01-no-concept"),
        pytest.param(BASE + ["concept.placeholder_token=toy"], ["'toy'", "vocabulary"],
                     id="06-placeholder-in-vocab"),
        pytest.param(BASE + ["concept.initializer_token=zqxvbn"], ["initializer_token", "zqxvbn", "not one"],
                     id="07-initializer-several-tokens"),
        pytest.param(BASE + ["concept.num_vectors=0"], ["num_vectors", "0"], id="08-num-vectors-0"),
        pytest.param(BASE + ["data.resolution=63"], ["data.resolution=63", "VAE"], id="09-resolution-63"),
        pytest.param(BASE + ["train.not_a_key=1"], ["not_a_key"], id="10-unknown-key"),
        pytest.param(BASE + ["hardware=h100"], ["h100", "Available options", "a100", "cpu", "v100"],
                     id="11-unknown-option"),
        pytest.param(BASE + ["train.max_steps=abc"], ["train.max_steps='abc'", "integer"], id="16-steps-not-a-number"),
        pytest.param(["hardware=v100", "+concept=demo", "model=tiny", "logger=none", "train.max_steps=2"],
                     ["fp16", "GPU"], id="15-fp16-without-gpu"),
    ],
)
def test_bad_value(tmp_path, args, needles):
    assert_clean_error(_cli(tmp_path, *args), _run_dir(tmp_path), *needles)


def test_a_refused_run_leaves_no_folder_and_keeps_a_folder_the_user_had(tmp_path):
    new = tmp_path / "new" / "runs" / "run"
    result = run_cli(*BASE, "concept.num_vectors=0", f"hydra.run.dir={new}")
    assert_clean_error(result, new, "num_vectors")
    assert not (tmp_path / "new").exists(), sorted(tmp_path.rglob("*"))
    mine = tmp_path / "mine"
    mine.mkdir()
    assert_clean_error(run_cli(*BASE, "concept.num_vectors=0", f"hydra.run.dir={mine}"), mine, "num_vectors")
    assert mine.is_dir()


# ---------------------------------------------------------------- concept image folders

def _png(path: Path, color: tuple[int, int, int]) -> None:
    Image.new("RGB", (32, 32), color).save(path)


def test_missing_image_folder(tmp_path):
    folder = tmp_path / "missing"
    result = _cli(tmp_path, *OWN_FOLDER, f"concept.train_data_dir={folder}")
    assert_clean_error(result, _run_dir(tmp_path), str(folder), "does not exist")
    assert not folder.exists()


def test_empty_image_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    result = _cli(tmp_path, *OWN_FOLDER, f"concept.train_data_dir={folder}")
    assert_clean_error(result, _run_dir(tmp_path), str(folder), "empty")
    assert not list(folder.iterdir())


def test_folder_without_readable_images(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "x.png").write_bytes(b"\x00garbage, not a PNG\xff" * 8)
    result = _cli(tmp_path, *BASE, f"concept.train_data_dir={folder}")
    assert_clean_error(result, _run_dir(tmp_path), str(folder), "readable image")


def test_corrupt_file_is_skipped_with_a_warning(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _png(folder / "a.png", (200, 40, 40))
    _png(folder / "b.png", (40, 40, 200))
    (folder / "broken.png").write_bytes(b"\x89PNG but then garbage" * 4)
    result = _cli(tmp_path, *BASE, f"concept.train_data_dir={folder}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, _show(result)
    assert (_run_dir(tmp_path) / "learned_embeds.safetensors").is_file()
    assert "Traceback" not in output, _show(result)
    assert not [line for line in result.stderr.splitlines() if line.startswith("error:")], _show(result)
    warnings = [line for line in output.splitlines() if "broken.png" in line]
    assert warnings and any("WARNING" in line or "skipping" in line for line in warnings), _show(result)
    assert "2 training images" in output, _show(result)


# ---------------------------------------------------------------- models and the Hub

def test_model_path_does_not_exist(tmp_path):
    # Under tmp_path rather than /does/not/exist: the bug above would otherwise write into /.
    missing = tmp_path / "does" / "not" / "exist"
    result = _cli(tmp_path, *BASE, f"model.pretrained_model_name_or_path={missing}")
    assert_clean_error(result, _run_dir(tmp_path), str(missing), "exist")
    assert not (tmp_path / "does").exists(), "a model was built next to the missing path"


HUB_MODELS = [("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
              ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")]


@pytest.mark.parametrize("model,hub_id", HUB_MODELS)
def test_hub_model_offline(tmp_path, monkeypatch, model, hub_id):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty HF cache: the model is surely absent
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _cli(tmp_path, "+concept=demo", f"model={model}", "hardware=cpu", "logger=none", "train.max_steps=2")
    assert_clean_error(result, _run_dir(tmp_path), hub_id, "HF_HUB_OFFLINE")


@pytest.mark.parametrize("model,hub_id", HUB_MODELS)
def test_hub_model_without_network(tmp_path, monkeypatch, model, hub_id):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the real network path
    start = time.monotonic()
    try:
        result = _cli(tmp_path, "+concept=demo", f"model={model}", "hardware=cpu", "logger=none",
                      "train.max_steps=2", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no clean failure within 120 s without a network (gave up after {time.monotonic() - start:.0f} s)")
    assert_clean_error(result, _run_dir(tmp_path), hub_id, "Hub")


def test_hub_concept_images_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _cli(tmp_path, "+concept=cat_toy", "model=tiny", "hardware=cpu", "logger=none", "train.max_steps=2")
    assert_clean_error(result, _run_dir(tmp_path), "diffusers/cat_toy_example", "concept.train_data_dir")


def test_an_output_directory_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli(*BASE, f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "cannot write" in line and str(blocker) in line and "fix:" in line


# ---------------------------------------------------------------- one run per folder

def _files(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_a_new_run_in_the_folder_of_a_finished_run_is_refused_and_changes_nothing(tmp_path):
    run_dir = _run_dir(tmp_path)
    assert _cli(tmp_path, *BASE, "train.checkpointing_steps=1").returncode == 0
    before = _files(run_dir)
    result = _cli(tmp_path, *BASE, "seed=7")
    assert result.returncode == 2 and "Traceback" not in result.stderr, _show(result)
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: {run_dir} already holds a run (run.json: completed)"), line
    assert "start in a new folder" in line and "train.resume_from_checkpoint=latest" in line, line
    assert _files(run_dir) == before  # .hydra/ and ti.log included
    resumed = _cli(tmp_path, *BASE, "train.max_steps=3", "train.resume_from_checkpoint=latest")
    assert resumed.returncode == 0, _show(resumed)


def test_two_runs_started_at_once_in_one_folder_one_is_refused_at_once(tmp_path):
    run_dir = _run_dir(tmp_path)
    cmd = [sys.executable, "-m", "ti_experiments", *BASE, "train.max_steps=40", f"hydra.run.dir={run_dir}"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert re.search(rf"error: {re.escape(str(run_dir))} (is in use by a run \(process \d+\)|already holds a run)",
                     refused), refused
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))  # one run's rows, nothing interleaved


def test_a_sweep_folder_that_holds_a_sweep_is_refused(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *BASE, "train.max_steps=1", "validation.enabled=false", "evaluation=none", "seed=0,1",
            f"hydra.sweep.dir={sweep_dir}"]
    assert run_cli(*args).returncode == 0
    before = _files(sweep_dir)
    again = run_cli(*args)
    assert again.returncode == 2 and "Traceback" not in again.stderr, _show(again)
    assert f"error: {sweep_dir} already holds a sweep" in again.stderr
    assert _files(sweep_dir) == before


def test_a_resolution_beyond_memory_is_refused_before_any_image_is_decoded(tmp_path):
    assert_clean_error(_cli(tmp_path, *BASE, "data.resolution=400000"), _run_dir(tmp_path),
                       "data.resolution=400000", "GiB of memory", "GiB is free")


# ---------------------------------------------------------------- argument errors of every command

@pytest.mark.parametrize("command", ["ti_experiments", "ti_experiments_dev.pretrain", "ti_experiments.generate",
                                     "ti_experiments.report", "ti_experiments.export", "ti_experiments.publish",
                                     "ti_experiments.evaluate", "ti_experiments.reproduce", "ti_experiments.bench",
                                     "ti_experiments_dev.quality", "ti_experiments.toyworld.picture"])
def test_an_unknown_option_is_one_error_line_of_every_command(tmp_path, command):
    result = subprocess.run([sys.executable, "-m", command, "--no-such-option"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, _show(result)
    assert re.fullmatch(r"error: \S.*; fix: \S.*", lines[0]) and "README" not in lines[0], lines[0]
    assert "--no-such-option" in lines[0] or "required" in lines[0], lines[0]


# ---------------------------------------------------------------- --help

def _help(module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)


def test_the_training_help_is_a_usage_line_the_required_concept_the_groups_examples_and_the_other_commands():
    from ti_experiments.__main__ import TRAIN_EXAMPLES
    from ti_experiments.cli_help import COMMANDS
    from ti_experiments.config import compose, options

    result = _help("ti_experiments")
    assert result.returncode == 0 and not result.stderr, _show(result)
    text = result.stdout
    assert text.startswith("usage: python -m ti_experiments +concept=NAME"), text
    assert "powered by Hydra" not in text
    concept_line = next(line for line in text.splitlines() if line.strip().startswith("+concept=NAME"))
    assert all(name in concept_line for name in options("concept")), concept_line
    hardware_line = next(line for line in text.splitlines() if line.strip().startswith("hardware=OPTION"))
    assert "cpu (default)" in hardware_line and "base" not in hardware_line  # base is what presets build on
    for group in ("model", "optimizer", "lr_scheduler", "evaluation", "logger", "hydra/launcher"):
        assert f"  {group}=OPTION" in text, group
    examples = text.split("examples:")[1].split("other commands")[0]
    assert examples.count("python -m ti_experiments ") == 3
    for module, _, _ in COMMANDS[1:]:
        assert f"python -m {module} " in text, module
    for command, _ in TRAIN_EXAMPLES:  # every example composes as written
        compose([a for a in command.split()[3:] if a != "-m" and "," not in a])


@pytest.mark.parametrize("module", ["ti_experiments.evaluate", "ti_experiments.report", "ti_experiments.reproduce",
                                    "ti_experiments.generate", "ti_experiments.export", "ti_experiments.publish",
                                    "ti_experiments.bench", "ti_experiments.versus"])
def test_every_command_has_the_same_short_help(module):
    from ti_experiments.cli_help import COMMANDS, describe

    result = _help(module)
    assert result.returncode == 0, _show(result)
    text = result.stdout
    assert text.startswith(f"usage: python -m {module} "), text
    assert describe(module) in text or module.endswith("generate")  # generate says more in its first line
    examples = text.split("examples:")[1].split("other commands (each has --help):")[0]
    assert examples.count(f"python -m {module} ") >= 2, examples
    others = text.split("other commands (each has --help):")[1]
    assert all(f"python -m {m} " in others for m, _, _ in COMMANDS if m != module), others
