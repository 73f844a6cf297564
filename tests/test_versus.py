"""versus runs our command and the diffusers example (here a stand-in that takes the example's arguments)
on the same concept, and scores both embeddings on the run's own held-out draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_RUN
from ti_experiments.versus import GUIDE, main, time_to_reach, users_word

# The example's command line, as far as versus uses it; it writes what it was given and an embedding of the
# right width (zeros: a different embedding from the run's)
STAND_IN = """
import argparse, json, os, sys
import torch
from safetensors.torch import save_file
p = argparse.ArgumentParser()
for name in ("pretrained_model_name_or_path", "train_data_dir", "placeholder_token", "initializer_token",
             "learnable_property", "num_vectors", "resolution", "seed", "mixed_precision", "train_batch_size",
             "gradient_accumulation_steps", "max_train_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps",
             "output_dir"):
    p.add_argument("--" + name)
p.add_argument("--scale_lr", action="store_true")
args = p.parse_args()
os.makedirs(args.output_dir)
width = json.load(open(os.path.join(args.pretrained_model_name_or_path, "text_encoder", "config.json")))["hidden_size"]
save_file({args.placeholder_token: torch.zeros(int(args.num_vectors), width)},
          os.path.join(args.output_dir, "learned_embeds.safetensors"))
json.dump(vars(args), open(os.path.join(args.output_dir, "args.json"), "w"))
sys.exit(int(os.environ.get("STAND_IN_EXIT", "0")))
"""

RUN = [o for o in TINY_RUN if not o.startswith("train.checkpointing_steps")]


@pytest.fixture
def stand_in(tmp_path) -> Path:
    path = tmp_path / "textual_inversion.py"
    path.write_text(STAND_IN)
    return path


@pytest.mark.slow
def test_versus_runs_both_and_scores_them_on_the_same_draws(tmp_path, stand_in, capsys, tiny_model_path):
    out = tmp_path / "versus"
    assert main([str(stand_in), "--out", str(out), *RUN]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "versus.json").read_text())
    ours, example = result["ours"], result["example"]
    assert ours["exit_code"] == 0 and example["exit_code"] == 0 and ours["wall_s"] > 0 and example["wall_s"] > 0
    given = json.loads((out / "example" / "args.json").read_text())
    run = json.loads((out / "ours" / "run.json").read_text())
    # the same concept, model, seed and folder; the guide's settings
    assert given["placeholder_token"] == "<demo-toy>" and given["initializer_token"] == result["initializer"] == "circle"
    assert result["ours_started_from"] == "circle"  # the tiny evaluation proposes no words
    assert Path(given["pretrained_model_name_or_path"]) == tiny_model_path
    assert Path(given["train_data_dir"]).is_dir() and given["seed"] == str(run["seeds"]["train"])
    assert given["scale_lr"] and [given["train_batch_size"], given["gradient_accumulation_steps"],
                                  given["max_train_steps"], given["learning_rate"]] == ["1", "4", "3000", "5.0e-04"]
    assert set(GUIDE) <= set(example["command"])
    # both scored by the run's evaluation: the run's own figure comes back, the example's differs
    summary = json.loads((out / "ours" / "summary.json").read_text())
    assert ours["scores"]["heldout_loss"] == pytest.approx(summary["heldout_loss"], rel=1e-4)
    assert example["scores"]["heldout_loss"] != ours["scores"]["heldout_loss"]
    # the run's metrics rows were seen as they were written, with their time since launch
    seen = [row for row in ours["lines"] if "heldout_loss" in row]
    assert seen and all(0 < row["since_launch_s"] <= ours["wall_s"] + 0.5 for row in seen)
    assert "wall s (launch to exit)" in printed and "heldout_loss" in printed
    assert json.loads(printed.strip().splitlines()[-1])["ours"]["wall_s"] == ours["wall_s"]


def test_the_example_starts_from_the_word_the_user_names_first():
    """Ours may start from a word it measured better; the example gets what its user would give it."""
    assert users_word("circle") == "circle" and users_word(["square", "circle"]) == "square"
    assert users_word("auto") is None  # then the example gets the word ours started from


@pytest.mark.parametrize("record", [None, {}, {"example": [1]}, {"example": {"command": "x"}}])
def test_a_folder_without_the_examples_record_is_refused_as_one_line(tmp_path, record):
    """A folder handed to --reuse-example is data: a missing or odd versus.json is a user error, not a crash."""
    from ti_experiments.errors import TIError
    from ti_experiments.versus import reused_example

    if record is not None:
        (tmp_path / "versus.json").write_text(json.dumps(record))
    with pytest.raises(TIError, match="holds no versus.json"):
        reused_example(tmp_path, ["py", "ex.py", "--seed", "0", "--output_dir", "x"])


def test_time_to_reach_is_the_first_loss_within_two_percent():
    lines = [{"step": 1, "loss": 1.0, "since_launch_s": 1.0}, {"step": 10, "heldout_loss": 0.5, "since_launch_s": 2.0},
             {"step": 20, "heldout_loss": 0.407, "since_launch_s": 3.0},
             {"step": 30, "heldout_loss": 0.3, "since_launch_s": 4.0}]
    assert time_to_reach(lines, 0.4) == {"step": 20, "since_launch_s": 3.0, "heldout_loss": 0.407}
    assert time_to_reach(lines, 0.2) is None


@pytest.mark.parametrize("case", ["no script", "not empty", "no concept", "random weights", "run dir", "no python"])
def test_bad_input_is_one_line_before_anything_runs(tmp_path, stand_in, capsys, case):
    out = tmp_path / "out"
    args = {"no script": [str(tmp_path / "missing.py"), "--out", str(out), *RUN],
            "not empty": [str(stand_in), "--out", str(tmp_path), *RUN],
            "no concept": [str(stand_in), "--out", str(out), *RUN[1:]],
            "random weights": [str(stand_in), "--out", str(out), "+concept=demo", "model=sd15",
                               "model.random_init=true"],
            "run dir": [str(stand_in), "--out", str(out), *RUN, "hydra.run.dir=/tmp/x"],
            "no python": [str(stand_in), "--example-python", str(tmp_path / "nope"), "--out", str(out), *RUN]}[case]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "; fix: " in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_a_failing_example_is_one_line_with_its_log(tmp_path, stand_in, capsys, monkeypatch, tiny_model_path):
    monkeypatch.setenv("STAND_IN_EXIT", "3")
    out = tmp_path / "versus"
    assert main([str(stand_in), "--out", str(out), *RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the example failed (exit code 3)") and str(out / "example.log") in err
    assert (out / "ours" / "learned_embeds.safetensors").is_file()  # ours is kept


@pytest.mark.slow
def test_an_earlier_example_run_is_reused_for_the_same_command_only(tmp_path, stand_in, capsys, tiny_model_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([str(stand_in), "--out", str(first), *RUN]) == 0
    # another seed of ours beside the same example run: its wall and embedding come from the first folder
    assert main([str(stand_in), "--reuse-example", str(first), "--out", str(second), *RUN, "seed=1"]) == 0
    earlier, now = (json.loads((f / "versus.json").read_text()) for f in (first, second))
    assert now["example"]["wall_s"] == earlier["example"]["wall_s"] and not (second / "example").exists()
    assert now["example"]["scores"]["heldout_loss"] == pytest.approx(earlier["example"]["scores"]["heldout_loss"])
    capsys.readouterr()
    # another concept setting is another example command: refused, one line
    assert main([str(stand_in), "--reuse-example", str(first), "--out", str(tmp_path / "third"), *RUN,
                 "concept.num_vectors=2"]) == 2
    assert "ran another concept, model or setting" in capsys.readouterr().err
    assert not (tmp_path / "third").exists()  # refused before anything ran
