"""Textual inversion on the toy world learns something real: the held-out loss of the learned token
falls clearly below the initializer word's, towards the loss of the concept described in words; a
resumed run learns the same embedding; the embedding loads back into diffusers and, through
`generate`, draws the concept's colour, which the same embedding as a negative pushes away."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import compose
from ti_experiments.experiment import run
from ti_experiments.records.run_record import read_metrics
from ti_experiments.toyworld import shipped, world

pytestmark = [pytest.mark.train,
              pytest.mark.skipif(not (shipped.WEIGHTS_DIR / "manifest.json").exists(),
                                 reason="the toy world's weights are not built (python -m ti_experiments_dev.pretrain)")]

TOY_RUN = ["+concept=demo", "logger=none", "validation.enabled=false", "train.max_steps=80",
           "evaluation.steps=40", "evaluation.image_metrics=false", "train.save_steps=40",
           "train.checkpointing_steps=40",
           f"evaluation.description='{world.CONCEPTS['demo'].description()}'"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return run(compose(*TOY_RUN, output_dir=tmp_path_factory.mktemp("toy")))


def test_the_learned_token_beats_the_initializer_word_and_the_best_is_kept(toy_run):
    rows = [r for r in read_metrics(toy_run) if "heldout_loss" in r]
    assert [r["step"] for r in rows] == [40, 80]
    init, words = rows[-1]["heldout_loss_init"], rows[-1]["heldout_loss_words"]
    assert words < init  # the model itself knows the description is better than "circle"
    assert rows[-1]["heldout_loss"] < 0.95 * init
    summary = json.loads((toy_run / "summary.json").read_text())
    assert summary["best_metric"] == "heldout_loss" and summary["best_step"] in (40, 80)


def orange_share(images) -> float:
    """The share of pixels of the demo toy's orange in [0, 1] float images [N, H, W, 3]."""
    orange = np.array(world.COLOURS["orange"]) / 255
    return float((np.abs(np.asarray(images, dtype=np.float64) - orange).sum(-1) < 0.25).mean())


def test_a_run_resumed_from_its_checkpoint_learns_the_same_embedding(toy_run, tmp_path):
    from safetensors.torch import load_file

    resumed = run(compose(*TOY_RUN, f"train.resume_from_checkpoint={toy_run / 'checkpoint-40'}",
                          output_dir=tmp_path / "resumed"))
    learned = load_file(toy_run / "learned_embeds.safetensors")["<demo-toy>"]
    assert torch.equal(load_file(resumed / "learned_embeds.safetensors")["<demo-toy>"], learned)
    before = [r["heldout_loss"] for r in read_metrics(toy_run) if "heldout_loss" in r]
    after = [r["heldout_loss"] for r in read_metrics(resumed) if "heldout_loss" in r]
    assert after[-1] == before[-1]


def test_generate_draws_the_concept_and_as_a_negative_pushes_it_away(toy_run, tmp_path):
    from ti_experiments.export import export
    from ti_experiments.models.generation import generate

    def share(prompt: str, embeddings=(), **kwargs) -> float:
        images = generate(prompt, embeddings, model=str(shipped.MODEL_DIR), num_images=8, steps=15, guidance=4.0,
                          seed=0, progress=False, **kwargs)
        return orange_share([np.asarray(i) / 255 for i in images])

    circle = share("a photo of a circle")
    assert share("a photo of a <demo-toy>", toy_run) > circle + 0.02
    # exported for A1111/ComfyUI (the file's name is the token) and loaded back: the same concept
    a1111 = export(toy_run, "a1111", tmp_path / "demo-toy.safetensors")
    assert share("a photo of a demo-toy", a1111) > circle + 0.02
    # the concept as a negative embedding pushes the picture away from it: fewer of its orange pixels
    plain = share("a photo of a large orange circle")
    assert share("a photo of a large orange circle", negative_embeddings=[toy_run]) < plain - 0.03


def test_the_embedding_loads_into_diffusers_and_draws_the_concepts_colour(toy_run):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(shipped.MODEL_DIR, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.load_textual_inversion(str(toy_run))
    pipe.set_progress_bar_config(disable=True)

    def share(prompt: str) -> float:
        return orange_share(pipe([prompt] * 4, num_inference_steps=15, guidance_scale=4.0, height=32, width=32,
                                 generator=torch.Generator().manual_seed(0), output_type="np").images)

    assert share("a photo of a <demo-toy>") > share("a photo of a circle") + 0.02
