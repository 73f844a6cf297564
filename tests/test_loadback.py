"""What a run writes loads into diffusers' own pipeline and generates with the placeholder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.experiment import run


@pytest.mark.parametrize("num_vectors", [1, 3])
def test_run_dir_loads_into_stable_diffusion_pipeline(tmp_path, tiny_model_path, num_vectors):
    from diffusers import StableDiffusionPipeline

    run_dir = run(compose(*TINY_RUN, f"concept.num_vectors={num_vectors}", "train.max_steps=2",
                          output_dir=tmp_path))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_path, safety_checker=None)
    pipe.load_textual_inversion(str(run_dir))
    tokens = ["<demo-toy>"] + [f"<demo-toy>_{i}" for i in range(1, num_vectors)]
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    learned = load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], learned)
    assert pipe.maybe_convert_prompt("a <demo-toy> train", pipe.tokenizer) == "a " + " ".join(tokens) + " train"
    image = pipe("a photo of a <demo-toy> on a beach", num_inference_steps=2, height=64, width=64,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
