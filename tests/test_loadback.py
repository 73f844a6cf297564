"""What a run writes loads into diffusers' own pipeline and generates with the placeholder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN, compose
from ti_experiments.experiment import run

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each


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


def test_sdxl_run_loads_into_the_sdxl_pipeline_both_ways(tmp_path, tiny_sdxl_path):
    """The two-file diffusers layout (two load_textual_inversion calls) and the A1111/ComfyUI clip_l/clip_g
    file (read, then one call per encoder) give the same encoders, which generate with the placeholder."""
    from diffusers import StableDiffusionXLPipeline

    from conftest import TINY_SDXL_RUN
    from ti_experiments.records.run_dir import read_embedding

    run_dir = run(compose(*TINY_SDXL_RUN, "concept.num_vectors=2", "train.max_steps=2", output_dir=tmp_path))
    tokens = ["<demo-toy>", "<demo-toy>_1"]

    two_files = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    two_files.load_textual_inversion(str(run_dir))
    two_files.load_textual_inversion(str(run_dir), weight_name="learned_embeds_2.safetensors",
                                     text_encoder=two_files.text_encoder_2, tokenizer=two_files.tokenizer_2)

    one_file = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    embedding = read_embedding(run_dir / "demo-toy.safetensors")
    assert embedding.format == "sdxl"
    for vectors, encoder, tokenizer in zip(embedding.vectors, (one_file.text_encoder, one_file.text_encoder_2),
                                           (one_file.tokenizer, one_file.tokenizer_2)):
        one_file.load_textual_inversion(vectors, token="<demo-toy>", text_encoder=encoder, tokenizer=tokenizer)

    learned = [load_file(run_dir / f"learned_embeds{s}.safetensors")["<demo-toy>"] for s in ("", "_2")]
    for pipe in (two_files, one_file):
        for encoder, tokenizer, rows in zip((pipe.text_encoder, pipe.text_encoder_2),
                                            (pipe.tokenizer, pipe.tokenizer_2), learned):
            ids = tokenizer.convert_tokens_to_ids(tokens)
            assert torch.equal(encoder.get_input_embeddings().weight[ids], rows)
    image = two_files("a photo of a <demo-toy> on a beach", num_inference_steps=2, height=64, width=64,
                      output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    again = one_file("a photo of a <demo-toy> on a beach", num_inference_steps=2, height=64, width=64,
                     output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert np.array_equal(image, again)
