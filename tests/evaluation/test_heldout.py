"""The held-out loss: fixed triples from their own seed, the training loop's loss, exactly reproducible,
and lower with a trained embedding than with the initializer after a short run at a high learning rate."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.data import ConceptImages, LatentCache
from ti_experiments.models.embeddings import add_placeholder_tokens
from ti_experiments.evaluation.heldout import build_heldout_set, heldout_loss
from ti_experiments.config import build
from ti_experiments.experiment import ensure_concept_images, run
from ti_experiments.records.run_dir import read_metrics

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each


def _parts_and_cache(cfg):
    from pathlib import Path

    parts = build(cfg.model)
    add_placeholder_tokens(parts.tokenizer, parts.text_encoder, cfg.concept.placeholder_token,
                           cfg.concept.initializer_token, cfg.concept.num_vectors)
    images = ConceptImages(ensure_concept_images(cfg.concept, Path(cfg.paths.cache_dir)), build(cfg.data))
    cache = LatentCache.build(parts.vae, images.pixels, with_flips=False, device="cpu", dtype=torch.float32)
    return parts, cache


def test_heldout_set_and_loss_are_exactly_reproducible_and_leave_the_global_rng_alone(tmp_path):
    cfg = compose(*TINY_RUN, output_dir=tmp_path)
    parts, cache = _parts_and_cache(cfg)
    init = str(cfg.concept.initializer_token)
    make = lambda seed: build_heldout_set(cache, parts, "<demo-toy>", init, "object", 8, seed)  # noqa: E731
    state = torch.random.get_rng_state()
    a, b, other = make(0), make(0), make(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for field in ("latents", "noise", "timesteps"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    for which in ("learned", "init"):
        assert torch.equal(a.prompts[which]["input_ids"], b.prompts[which]["input_ids"])
    assert not torch.equal(a.noise, other.noise)
    assert sorted(a.timesteps.tolist()) == a.timesteps.tolist() and a.timesteps.max() < 1000  # one per stratum
    parts.unet.eval()
    parts.text_encoder.eval()
    loss = lambda which: heldout_loss(parts, parts.text_encoder, a, which, torch.float32, torch.device("cpu"), 3)  # noqa: E731
    first = loss("learned")
    assert first == loss("learned")
    # before training the placeholder's row is the initializer's: both prompts give the same loss
    assert abs(first - loss("init")) < 1e-6


def test_the_loss_is_the_same_scored_one_triple_at_a_time_or_in_batches(tmp_path):
    cfg = compose(*TINY_RUN, output_dir=tmp_path)
    parts, cache = _parts_and_cache(cfg)
    held = build_heldout_set(cache, parts, "<demo-toy>", str(cfg.concept.initializer_token), "object", 16, 0)
    parts.unet.eval()
    parts.text_encoder.eval()
    with torch.no_grad():
        # a learned row unlike the initializer's (not a constant shift, which the encoder's layer norms remove)
        rows = parts.text_encoder.get_input_embeddings().vectors
        rows += 0.5 * torch.randn(rows.shape, generator=torch.Generator().manual_seed(0))
    losses = {b: [heldout_loss(parts, parts.text_encoder, held, which, torch.float32, torch.device("cpu"), b)
                  for which in ("learned", "init")] for b in (1, 4, 5, 16)}
    for b in (4, 5, 16):
        assert losses[b] == pytest.approx(losses[1], rel=1e-6, abs=0)
    assert losses[1][0] != losses[1][1]


def test_trained_embedding_beats_the_initializer_and_the_best_is_kept(tmp_path):
    # 10x the default learning rate; batches of 4 so that 10 steps go somewhere (measured: the gap to
    # the initializer grows at every evaluation, -1.3e-4 at step 10 and -2.1e-4 at step 20)
    run_dir = run(compose(*TINY_RUN, "train.max_steps=10", "train.batch_size=4", "train.scale_lr=false",
                          "optimizer.lr=5e-3", "data.repeats=10", "evaluation.steps=5",
                          "evaluation.heldout_samples=32", "train.save_steps=5", output_dir=tmp_path))
    rows = [r for r in read_metrics(run_dir) if "heldout_loss" in r]
    assert [r["step"] for r in rows] == [5, 10]
    assert len({r["heldout_loss_init"] for r in rows}) == 1
    assert rows[-1]["heldout_loss"] < rows[-1]["heldout_loss_init"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kept_step"] == 10 and summary["heldout_loss"] == rows[-1]["heldout_loss"]
    kept = load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"]
    assert torch.equal(kept, load_file(run_dir / "learned_embeds-steps-10.safetensors")["<demo-toy>"])
