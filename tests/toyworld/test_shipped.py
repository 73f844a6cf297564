"""The shipped toy world: the files are the ones the manifest names, diffusers loads the model as it loads
SD 1.x, and the judge tells the world's attributes apart."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from ti_experiments.toyworld import shipped, world

pytestmark = pytest.mark.skipif(not (shipped.WEIGHTS_DIR / "manifest.json").exists(),
                                reason="the toy world's weights are not built (python -m ti_experiments_dev.pretrain)")


def test_every_file_matches_its_sha256_and_all_fit_in_25_mb():
    manifest = json.loads((shipped.WEIGHTS_DIR / "manifest.json").read_text())
    files = {str(p.relative_to(shipped.WEIGHTS_DIR)) for p in shipped.WEIGHTS_DIR.rglob("*") if p.is_file()}
    assert files - {"manifest.json"} == set(manifest["sha256"])
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((shipped.WEIGHTS_DIR / name).read_bytes()).hexdigest() == digest, name
    assert sum((shipped.WEIGHTS_DIR / n).stat().st_size for n in files) < 25 * 2**20
    assert set(manifest["stages"]) == {"vae", "generator", "judge", "classifier"}


def test_diffusers_loads_the_model_like_sd15_and_draws_32px_images():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(shipped.MODEL_DIR, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    assert pipe.unet.dtype == torch.float32 and pipe.scheduler.config.prediction_type == "v_prediction"
    image = pipe("a large red plain square at the center on a gray background", num_inference_steps=10,
                 height=32, width=32, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    # the background is the gray one asked for (the world's backgrounds are far apart)
    corners = torch.tensor(image[[0, 0, -1, -1], [0, -1, 0, -1]] * 255)
    assert (corners - torch.tensor(world.BACKGROUNDS["gray"])).abs().mean() < 40


def test_model_toyworld_composes_the_shipped_folder_and_its_judge():
    from conftest import compose

    cfg = compose("+concept=demo")
    assert cfg.model.pretrained_model_name_or_path == str(shipped.MODEL_DIR)
    assert cfg.evaluation.clip_model == str(shipped.JUDGE_DIR / "clip")
