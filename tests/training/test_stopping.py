"""The stopping rule: a plateau of the held-out loss ends a run before train.max_steps, the lowest step is
the one kept, a resumed run stops at the same step with the same bytes, packed jobs stop on their own;
and several initializer words are scored by the held-out loss, the lowest starting."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.errors import TIError
from ti_experiments.records.run_dir import read_metrics
from ti_experiments.training.settings import TrainSettings
from ti_experiments.training.stopping import Plateau, Stopping

# evaluated every 2 steps; the tiny model's held-out loss barely moves (it is random), so the rule sees a
# plateau at once: 2 evaluations without a 0.5% gain after the first one stop the run at step 6 (no floor)
STOPS = [*TINY_RUN, "train.max_steps=40", "evaluation.steps=2", "train.stop_patience=2", "train.stop_min_fraction=0"]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_the_rule_stops_after_patience_evaluations_without_a_real_improvement_and_keeps_the_lowest():
    rule = Plateau(patience=3, min_improvement=0.01)
    assert rule.observe(10, 1.0) and not rule.done  # the first evaluation is the first bar
    assert rule.observe(20, 0.98) and rule.waited == 0  # 2% better: an improvement
    assert rule.observe(30, 0.975) and rule.waited == 1  # lower (kept), but by less than 1%: no reset
    assert not rule.observe(40, 0.99) and rule.waited == 2
    assert not rule.observe(50, float("nan")) and rule.waited == 3 and rule.done  # a broken score is no gain
    assert (rule.best_step, rule.best_loss, rule.bar_step) == (30, 0.975, 20)
    assert "did not improve by 1.00% in 3 evaluations after step 20" in rule.reason()
    again = Plateau(**json.loads(json.dumps(rule.__dict__)))  # what a checkpoint holds, through JSON
    assert again == rule


def test_the_rule_stops_no_run_before_its_floor():
    """An early plateau often breaks (the toy world's demo_style: flat for 500 steps, then 40% lower): the
    rule waits until train.stop_min_fraction of train.max_steps, then stops at the first step it may."""
    settings = TrainSettings(max_steps=3000, stop_patience=2)
    assert settings.stop_min_step == 990  # the default: a third
    stopping = Stopping(settings, watching=True)
    for step in range(120, 1200, 120):
        stopping.observe(step, {"heldout_loss": 0.35}, [torch.zeros(1, 4)])
        assert stopping.stop == (step >= 990), step  # a plateau since step 120, stopped at 1080
    assert stopping.outcome(1080, 3000, stopped=True)["stop_rule"]["min_step"] == 990
    with pytest.raises(TIError):
        TrainSettings(stop_min_fraction=1.5)


def test_off_or_without_a_held_out_loss_the_run_keeps_its_last_step():
    last = [torch.ones(1, 4)]
    for settings, watching in ((TrainSettings(stop_early=False), True), (TrainSettings(), False)):
        stopping = Stopping(settings, watching)
        stopping.observe(10, {"heldout_loss": 0.5}, [torch.zeros(1, 4)])
        assert not stopping.stop and stopping.kept_vectors(last) is last
        outcome = stopping.outcome(100, 100, stopped=False)
        assert outcome["kept_step"] == 100 and outcome["stop_reason"] == "reached train.max_steps=100"
    assert "stop_early=false" in Stopping(TrainSettings(stop_early=False), True).outcome(9, 9, False)["kept_by"]


def test_bad_stopping_settings_are_one_line_errors():
    for bad in ({"stop_patience": 0}, {"stop_min_improvement": -0.1}, {"stop_min_improvement": 1.5},
                {"stop_early": "yes"}):
        with pytest.raises(TIError):
            TrainSettings(**bad)


def test_several_initializer_words_need_the_held_out_loss():
    from ti_experiments.config.checks import check_config

    with pytest.raises(TIError, match="evaluation is off"):
        check_config(compose(*TINY_RUN, "evaluation=none", "concept.initializer_token=[circle,square]"))
    with pytest.raises(TIError, match="empty"):
        check_config(compose(*TINY_RUN, "concept.initializer_token=[]"))


@pytest.mark.train
def test_a_plateau_stops_the_run_before_its_ceiling_and_the_lowest_step_is_kept(tmp_path):
    from ti_experiments.experiment import run

    run_dir = run(compose(*STOPS, "train.checkpointing_steps=2", output_dir=tmp_path / "straight"))
    rows = [r for r in read_metrics(run_dir) if "heldout_loss" in r]
    summary, record = _summary(run_dir), json.loads((run_dir / "run.json").read_text())
    assert summary["steps"] == summary["stopped_step"] == 6 < 40 and [r["step"] for r in rows] == [2, 4, 6]
    kept = min(rows, key=lambda r: r["heldout_loss"])
    assert summary["kept_step"] == kept["step"] and summary["heldout_loss"] == kept["heldout_loss"]
    assert summary["stop_reason"].startswith("stopped early: the held-out loss did not improve by 0.50%")
    assert "lowest held-out loss" in summary["kept_by"]
    assert record["stopping"]["kept_step"] == kept["step"] and record["stopping"]["stop_rule"]["history"]
    saved = load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"]
    assert torch.equal(saved, load_file(run_dir / f"learned_embeds-steps-{kept['step']}.safetensors")["<demo-toy>"])
    assert (run_dir / "checkpoint-4" / "stopping.json").is_file()

    # resumed from the checkpoint before the stop, in a new folder: the same stop, the same bytes
    resumed = run(compose(*STOPS, "train.checkpointing_steps=2",
                          f"train.resume_from_checkpoint={run_dir / 'checkpoint-4'}", output_dir=tmp_path / "resumed"))
    assert _summary(resumed)["stopped_step"] == 6 and _summary(resumed)["kept_step"] == kept["step"]
    assert (resumed / "learned_embeds.safetensors").read_bytes() == (run_dir / "learned_embeds.safetensors").read_bytes()

    # a checkpoint of the step the rule stopped at: nothing more is trained
    again = run(compose(*STOPS, "train.checkpointing_steps=2",
                        f"train.resume_from_checkpoint={run_dir / 'checkpoint-6'}", output_dir=tmp_path / "again"))
    assert _summary(again)["stopped_step"] == 6 and not _summary(again)["steps_per_sec"]
    assert (again / "learned_embeds.safetensors").read_bytes() == (run_dir / "learned_embeds.safetensors").read_bytes()

    # switched off: the ceiling, and the last step
    off = run(compose(*STOPS, "train.max_steps=8", "train.stop_early=false", output_dir=tmp_path / "off"))
    assert _summary(off)["stopped_step"] == _summary(off)["kept_step"] == 8
    assert torch.equal(load_file(off / "learned_embeds.safetensors")["<demo-toy>"],
                       load_file(off / "learned_embeds-steps-8.safetensors")["<demo-toy>"])


@pytest.mark.train
def test_packed_jobs_stop_on_their_own(tmp_path):
    from ti_experiments.experiment import run
    from ti_experiments.training.packed import Pack

    jobs = [["train.stop_patience=1"], ["train.stop_early=false"]]
    base = [*STOPS, "train.max_steps=10", "train.save_steps=0", "train.checkpointing_steps=0"]
    pack = Pack(["0", "1"])
    results = pack.run([lambda i=i, job=job: run(compose(*base, *job, output_dir=tmp_path / str(i)))
                        for i, job in enumerate(jobs)])
    assert all(not isinstance(r, BaseException) for r in results), results
    assert _summary(tmp_path / "0")["stopped_step"] == 4  # one evaluation without a gain after step 2
    assert _summary(tmp_path / "1")["stopped_step"] == 10
    assert [r["step"] for r in read_metrics(tmp_path / "1")][-1] == 10


@pytest.mark.train
def test_a_list_of_initializer_words_starts_from_the_lowest_scoring_one(tmp_path):
    from ti_experiments.experiment import run

    words = ["circle", "square", "triangle", "red"]
    run_dir = run(compose(*TINY_RUN, "train.max_steps=1", f"concept.initializer_token=[{','.join(words)}]",
                          output_dir=tmp_path / "list"))
    chosen = json.loads((run_dir / "run.json").read_text())["initializer"]
    assert set(chosen["scores"]) == set(words) and len(set(chosen["scores"].values())) > 1
    assert chosen["chosen"] == min(words, key=chosen["scores"].get) == _summary(run_dir)["initializer"]
    # its score is the held-out loss of that word: the run that names it alone scores it as the initializer
    alone = run(compose(*TINY_RUN, "train.max_steps=1", f"concept.initializer_token={chosen['chosen']}",
                        output_dir=tmp_path / "alone"))
    init = read_metrics(alone)[-1]["heldout_loss_init"]
    assert read_metrics(run_dir)[-1]["heldout_loss_init"] == init
    assert chosen["scores"][chosen["chosen"]] == pytest.approx(init, rel=1e-6)
    assert (run_dir / "learned_embeds.safetensors").read_bytes() == (alone / "learned_embeds.safetensors").read_bytes()


@pytest.mark.train
def test_auto_proposes_words_from_the_vocabulary_and_scores_them(tmp_path):
    from ti_experiments.experiment import run

    run_dir = run(compose(*TINY_RUN, "train.max_steps=1", "concept.initializer_token=auto",
                          "evaluation.initializer_proposals=5", output_dir=tmp_path))
    chosen = json.loads((run_dir / "run.json").read_text())["initializer"]
    assert len(chosen["scores"]) == 5 and chosen["chosen"] == min(chosen["scores"], key=chosen["scores"].get)


@pytest.mark.train
def test_proposed_words_are_scored_beside_the_users_word(tmp_path):
    """The default start: the user's word and the proposals, the lowest held-out loss starting."""
    from ti_experiments.experiment import run

    run_dir = run(compose(*TINY_RUN, "train.max_steps=1", "concept.initializer_token=circle",
                          "evaluation.initializer_proposals=3", output_dir=tmp_path))
    chosen = json.loads((run_dir / "run.json").read_text())["initializer"]
    words = list(chosen["scores"])
    assert words[0] == "circle" and 3 <= len(words) <= 4  # the user's word first (a proposal may repeat it)
    assert chosen["chosen"] == min(words, key=chosen["scores"].get)


def test_auto_needs_proposals_and_only_the_toy_world_proposes_by_default():
    from ti_experiments.config.checks import check_config

    with pytest.raises(TIError, match="initializer_proposals=0"):
        check_config(compose(*TINY_RUN, "concept.initializer_token=auto", "evaluation.initializer_proposals=0"))
    assert check_config(compose("+concept=eared_box", "model=toyworld")).evaluation.initializer_proposals == 8
    # the demo shows its word before training (the README's picture): it starts from it
    assert check_config(compose("+concept=demo")).evaluation.initializer_proposals == 0
    # real models start from the user's word, as every published recipe does
    assert check_config(compose("+concept=cat_toy")).evaluation.initializer_proposals == 0
    assert check_config(compose("+concept=cat_toy", "model=sdxl")).evaluation.initializer_proposals == 0
    assert check_config(compose(*TINY_RUN)).evaluation.initializer_proposals == 0  # a random CLIP's words


@pytest.mark.train
def test_without_the_proposing_clip_the_users_word_starts_with_a_warning(tmp_path, caplog):
    """Proposals only add candidates: an unavailable CLIP (offline, say) leaves the user's word; `auto` fails."""
    from ti_experiments.experiment import run

    missing = [f"evaluation.clip_model={tmp_path / 'no-clip'}", "evaluation.initializer_proposals=3"]
    run_dir = run(compose(*TINY_RUN, "train.max_steps=1", "concept.initializer_token=circle", *missing,
                          output_dir=tmp_path / "word"))
    assert "initializer" not in json.loads((run_dir / "run.json").read_text())  # one word: nothing to choose
    assert "no initializer words proposed" in caplog.text and "circle starts" in caplog.text
    with pytest.raises(TIError, match="no-clip"):
        run(compose(*TINY_RUN, "train.max_steps=1", "concept.initializer_token=auto", *missing,
                    output_dir=tmp_path / "auto"))
