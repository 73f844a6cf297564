"""The recipe's settings: Min-SNR-gamma weighting of the training loss (train.snr_gamma) and the learned
vectors held at the vocabulary's norm (train.keep_norm)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.experiment import run
from ti_experiments.training.loss import snr_weights, weighted_mean


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_min_snr_weights_clip_the_easy_timesteps(kind):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=kind)
    t = torch.tensor([0, 100, 500, 999])
    a = scheduler.alphas_cumprod[t]
    snr = a / (1 - a)
    weights = snr_weights(scheduler, t, 5.0)
    expected = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1 if kind == "v_prediction" else snr)
    assert torch.allclose(weights, expected.float())
    if kind == "epsilon":
        assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)  # SNR of t=999 is below 5: weight 1
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert weighted_mean(scheduler, losses, t, None) == losses.mean()
    assert weighted_mean(scheduler, losses, t, 5.0) == pytest.approx(float((losses * weights).mean()))


@pytest.mark.train
def test_snr_gamma_changes_the_training_and_is_checked(tmp_path):
    # the last step's file (learned_embeds.safetensors holds the step with the lowest held-out loss)
    plain = load_file(run(compose(*TINY_RUN, output_dir=tmp_path / "a")) / "learned_embeds-steps-4.safetensors")
    # gamma 0.1: below the SNR of most timesteps (at 5 the few timesteps of 4 steps may all weigh 1)
    weighted = load_file(run(compose(*TINY_RUN, "train.snr_gamma=0.1", output_dir=tmp_path / "b"))
                         / "learned_embeds-steps-4.safetensors")
    assert not torch.equal(plain["<demo-toy>"], weighted["<demo-toy>"])
    from ti_experiments.config.checks import check_config
    from ti_experiments.errors import TIError

    with pytest.raises(TIError, match="snr_gamma"):
        check_config(compose(*TINY_RUN, "train.snr_gamma=0", output_dir=tmp_path / "c"))


@pytest.mark.train
def test_keep_norm_holds_every_learned_vector_at_the_vocabulary_norm(tmp_path, tiny_model_path):
    from transformers import CLIPTextModel

    run_dir = run(compose(*TINY_RUN, "train.keep_norm=true", "concept.num_vectors=2", "optimizer.lr=0.05",
                          output_dir=tmp_path))
    vocab = CLIPTextModel.from_pretrained(tiny_model_path, subfolder="text_encoder").get_input_embeddings().weight
    target = vocab.norm(dim=-1).mean()
    for name in ("learned_embeds-steps-4.safetensors", "learned_embeds-steps-2.safetensors"):
        vectors = load_file(run_dir / name)["<demo-toy>"]
        assert torch.allclose(vectors.norm(dim=-1), target.expand(2), rtol=1e-5), name


@pytest.mark.train
def test_batch_and_accumulation_are_one_recipe_the_images_per_step(tmp_path):
    """Every item draws its latent, noise and timestep from its own seed (run seed, epoch, position), so 4
    images a step give the same embedding as one batch of 4, 1 x accumulation 4 or 2 x 2, to float
    rounding: only the speed differs, and the recipe's question is the images per step."""
    def rows(batch, acc):
        folder = run(compose(*TINY_RUN, f"train.batch_size={batch}", f"train.gradient_accumulation_steps={acc}",
                             "train.max_steps=3", "evaluation.enabled=false", output_dir=tmp_path / f"{batch}x{acc}"))
        return load_file(folder / "learned_embeds.safetensors")["<demo-toy>"]

    one_batch = rows(4, 1)
    assert torch.allclose(rows(1, 4), one_batch, atol=1e-6) and torch.allclose(rows(2, 2), one_batch, atol=1e-6)
    assert (rows(2, 1) - one_batch).abs().max() > 1e-4  # 2 images a step: another training
