"""The evaluation config: checked values, image metrics off on a CPU unless asked, metric directions."""

import math

import pytest
import torch

from conftest import compose
from ti_experiments.errors import TIError
from ti_experiments.evaluation import EvaluationSettings, direction, worst
from ti_experiments.config import build
from ti_experiments.experiment import objective


def test_presets_compose_and_the_tiny_model_picks_the_offline_pair():
    default = build(compose("+concept=cat_toy").evaluation)  # the default model, SD 1.5
    assert default.clip_model == "openai/clip-vit-base-patch32" and default.dino_model == "facebook/dino-vits16"
    toy = build(compose("+concept=demo").evaluation)  # the demo trains on the toy world: its own judge
    assert toy.clip_model.endswith("toyworld/weights/judge/clip") and toy.prompts == "toyworld"
    tiny = build(compose("+concept=demo", "model=tiny").evaluation)
    assert "tiny-eval-2" in tiny.clip_model and tiny.enabled
    assert not build(compose("+concept=demo", "model=tiny", "evaluation=none").evaluation).enabled
    chosen = build(compose("+concept=demo", "model=tiny", "evaluation=default").evaluation)
    assert chosen.clip_model == default.clip_model  # the command line wins over the model's choice


def test_image_metrics_auto_follows_the_device():
    s = EvaluationSettings()
    assert not s.images_on(torch.device("cpu")) and s.images_on(torch.device("cuda"))
    assert EvaluationSettings(image_metrics=True).images_on(torch.device("cpu"))


def test_the_auto_cadence_follows_the_triples_and_the_items_per_step():
    s = EvaluationSettings()
    assert s.steps == "auto"
    assert s.cadence(1) == 240  # 16 triples at batch 1: 15 x 16 = 240
    assert EvaluationSettings(heldout_samples=32).cadence(8) == 60 and EvaluationSettings(heldout_samples=32).cadence(3) == 160
    assert EvaluationSettings(heldout_samples=1).cadence(64) == 10  # never below 10
    assert EvaluationSettings(steps=7).cadence(1) == 7 and EvaluationSettings(steps=None).cadence(1) is None


@pytest.mark.parametrize("bad", [{"steps": "often"}, {"image_metrics": "yes"}, {"num_images": 0},
                                 {"steps": -1}])
def test_bad_values_are_one_line_errors(bad):
    with pytest.raises(TIError):
        EvaluationSettings(**bad)


def test_directions_and_the_objective_of_a_run(tmp_path):
    assert direction("clip_i") == direction("best_dino") == "maximize"
    assert direction("heldout_loss") == direction("avg_loss") == "minimize"
    assert worst("clip_t") == -math.inf and worst("heldout_loss") == math.inf
    assert objective(tmp_path, "clip_i") == -math.inf  # no summary.json: the worst trial either way
    (tmp_path / "summary.json").write_text('{"clip_i": 0.7, "avg_loss": 0.1}')
    assert objective(tmp_path, "clip_i") == 0.7 and objective(tmp_path, "dino") == -math.inf


@pytest.mark.parametrize(("objective", "expected"), [("avg_loss", "minimize"), ("heldout_loss", "minimize"),
                                                     ("clip_i", "maximize"), ("dino", "maximize")])
def test_the_optuna_sweep_takes_its_direction_from_the_objective(objective, expected):
    from omegaconf import OmegaConf

    from ti_experiments.config import compose

    cfg = compose([f"objective={objective}"], return_hydra_config=True, sweep="optuna")
    assert OmegaConf.select(cfg, "hydra.sweeper.direction") == expected
