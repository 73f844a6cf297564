"""The benchmark runs on the tiny model and prints every field (the numbers themselves are not tested)."""

from __future__ import annotations

import json

import pytest
import torch

from ti_experiments.bench import PHASES, main
from ti_experiments.models.random_init import ARCHITECTURES


def test_bench_prints_a_table_and_one_json_line(capsys):
    assert main(["model=tiny", "hardware=cpu", "--warmup", "1", "--steps", "2", "--phase-steps", "1",
                 "--reference"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    for key in ("median_step_s", "images_per_s", "time_to_first_step_s", "peak_rss_gib", "phases_s",
                "unavoidable_s", "limit_ratio", "reference_median_step_s", "speedup_vs_reference"):
        assert key in result, key
    assert set(result["phases_s"]) == {*PHASES, "other"}
    assert len(result["step_s"]) == 2 and all(s > 0 for s in result["step_s"])
    assert result["unavoidable_s"] > 0 and result["limit_ratio"] > 0 and result["time_to_first_step_s"] > 0
    table = "\n".join(out[:-1])
    assert "limit ratio" in table and "unet bwd" in table and "speed-up vs example-style step" in table
    # the cost of the held-out loss: one evaluation, and its share of the steps between two of them
    assert 0 < result["evaluation_s"] and result["evaluation_every"] == 100
    share = result["evaluation_s"] / (100 * result["median_step_s"])
    assert result["evaluation_share"] == pytest.approx(share, rel=0.05)  # the JSON line is rounded
    assert "held-out loss evaluation" in table


def test_bench_bad_override_is_one_line(capsys):
    assert main(["model=tiny", "hardware=h100"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_random_sd15_has_the_published_shapes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = ARCHITECTURES["sd15"]
    with torch.device("meta"):
        counts = {
            "unet": sum(p.numel() for p in UNet2DConditionModel(**arch["unet"]).parameters()),
            "vae": sum(p.numel() for p in AutoencoderKL(**arch["vae"]).parameters()),
            "text_encoder": sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(**arch["text_encoder"])).parameters()),
        }
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_padded_tokenizer_matches_clip_ids(tmp_path):
    from transformers import CLIPTokenizer

    from ti_experiments.models.tiny import write_tokenizer_files

    write_tokenizer_files(tmp_path, vocab_size=49408)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert len(tok("toy", add_special_tokens=False).input_ids) == 1


def test_random_sdxl_has_the_published_shapes():
    from ti_experiments.models.random_init import build_module

    with torch.device("meta"):
        counts = {part: sum(p.numel() for p in build_module("sdxl", part).parameters())
                  for part in ("unet", "vae", "text_encoder", "text_encoder_2")}
    assert counts == {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                      "text_encoder_2": 694_659_840}
    unet = ARCHITECTURES["sdxl"]["unet"]
    assert unet["cross_attention_dim"] == 768 + 1280
    assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + 1280
