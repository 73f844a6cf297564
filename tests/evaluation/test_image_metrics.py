"""CLIP-I, CLIP-T and DINO on the tiny random CLIP/ViT pair built offline: defined, in range, exact."""

import numpy as np
import pytest
from PIL import Image

from ti_experiments.errors import TIError
from ti_experiments.evaluation.image_metrics import EvalModels, ImageScorer, ensure_tiny_eval_models


@pytest.fixture(scope="module")
def models(cache_dir):
    folder = ensure_tiny_eval_models(cache_dir / "models")
    assert ensure_tiny_eval_models(cache_dir / "models") == folder  # built once, then reused
    return EvalModels(str(folder / "clip"), str(folder / "dino"), "cpu")


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_an_image_scored_against_itself_is_one(models):
    [image] = _images(1)
    scores = ImageScorer(models, [image]).score([image], ["a toy"])
    assert scores["clip_i"] == pytest.approx(1.0, abs=1e-5) and scores["dino"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= scores["clip_t"] <= 1.0


def test_scores_are_means_of_cosines_in_range_and_deterministic(models):
    real, generated = _images(3, seed=1), _images(4, seed=2)
    scorer = ImageScorer(models, real)
    texts = ["a toy in the jungle", "a toy in the snow", "a red toy", "a wet toy"]
    first = scorer.score(generated, texts)
    assert first == scorer.score(generated, texts)
    assert all(-1.0 <= v <= 1.0 for v in first.values())
    clip, _ = models.image_features(generated)
    real_clip, _ = models.image_features(real)
    assert first["clip_i"] == pytest.approx((clip @ real_clip.T).mean().item(), abs=1e-6)


def test_a_missing_model_is_a_one_line_error(tmp_path):
    with pytest.raises(TIError, match="evaluation.clip_model"):
        EvalModels(str(tmp_path / "nope"), str(tmp_path / "nope"), "cpu")


def test_models_of_the_wrong_kind_are_refused_before_any_weights_load(tmp_path):
    from ti_experiments.evaluation.image_metrics import locate_models

    folder = ensure_tiny_eval_models(tmp_path)
    assert locate_models(str(folder / "clip"), str(folder / "dino")) == (str(folder / "clip"), str(folder / "dino"))
    with pytest.raises(TIError, match="evaluation.clip_model .* is not a CLIP model"):
        locate_models(str(folder / "dino"), str(folder / "dino"))
    with pytest.raises(TIError, match="evaluation.dino_model .* has no config.json"):
        locate_models(str(folder / "clip"), str(tmp_path))


@pytest.mark.parametrize("which", ["clip", "dino"])
def test_an_evaluation_model_of_pickled_weights_is_refused_unopened(tmp_path, which):
    import pickle
    import shutil

    from conftest import Payload

    folder = ensure_tiny_eval_models(tmp_path / "built")
    copy = tmp_path / which
    shutil.copytree(folder / which, copy)
    (copy / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (copy / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    models = {"clip": str(folder / "clip"), "dino": str(folder / "dino"), which: str(copy)}
    setting = "clip_model" if which == "clip" else "dino_model"
    with pytest.raises(TIError, match=rf"evaluation.{setting} .* has only PyTorch pickle weights") as err:
        EvalModels(models["clip"], models["dino"], "cpu")
    assert f"./{which}-safetensors" in err.value.fix
    assert not marker.exists()
