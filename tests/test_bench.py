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
    from conftest import compose
    from ti_experiments.config.checks import check_config

    settings = check_config(compose("+concept=demo", "model=tiny", "hardware=cpu"))
    every = settings.evaluation.cadence(settings.train.batch_size * settings.train.gradient_accumulation_steps)
    assert 0 < result["evaluation_s"] and result["evaluation_every"] == every  # evaluation.steps=auto's cadence
    share = result["evaluation_s"] / (every * result["median_step_s"])
    assert result["evaluation_share"] == pytest.approx(share, rel=0.05)  # the JSON line is rounded
    assert "held-out loss evaluation" in table
    # the start, part by part: together they are the time to the first step
    parts = result["time_to_first_step_parts_s"]
    assert list(parts) == ["imports (python, torch, this package)", "imports (diffusers, transformers, accelerate)",
                           "config", "text encoder, VAE, images", "UNet", "latent cache (step 1's images)",
                           "first step"]
    assert all(v >= 0 for v in parts.values()) and parts["latent cache (step 1's images)"] > 0
    assert sum(parts.values()) == pytest.approx(result["time_to_first_step_s"], abs=0.01)
    assert 0 < result["peak_rss_after_load_gib"] <= result["peak_rss_gib"]
    assert "peak RSS GiB after loading" in table


def test_bench_times_the_sdxl_example_step_too(capsys):
    """SDXL's example-style step: both encoders' matrices in AdamW, their frozen rows restored."""
    # batch 1: the tiny SDXL model's step in bf16 on a CPU is seconds an image, and the shapes are what is tested
    assert main(["model=tiny_sdxl", "hardware=cpu", "train.batch_size=1", "--warmup", "1", "--steps", "2",
                 "--phase-steps", "1", "--reference"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["reference_step_s"]) == 2 and all(s > 0 for s in result["reference_step_s"])
    assert result["speedup_vs_reference"] > 0


FAKE_TRAINING = """
import sys, time
print("loading", flush=True)
x = bytearray(64 * 2**20)  # 64 MiB, touched
for i in range(0, len(x), 4096):
    x[i] = 1
time.sleep(0.3)
{steps}
sys.exit({code})
"""


@pytest.mark.parametrize("style", ["ours", "example"])
def test_launch_times_a_command_to_its_first_and_last_step_and_reads_its_peak_memory(capsys, style):
    import sys

    line = ("print('[2026-11-30 03:54:27,061][ti_experiments.training.loop][INFO] - step {i}/3  loss 1.0', flush=True)"
            if style == "ours" else
            "sys.stderr.write('\\rSteps:  33%|###   | {i}/3 [00:05<00:10, loss=0.1]'); sys.stderr.flush()")
    steps = "\n".join(f"time.sleep(0.2)\n{line.format(i=i)}" for i in (1, 2, 3))
    assert main(["--launch", sys.executable, "-c", FAKE_TRAINING.format(steps=steps, code=0)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["last_step"] == 3 and result["exit_code"] == 0
    assert 0.3 < result["first_step_s"] < result["last_step_s"] <= result["wall_s"]
    assert result["last_step_s"] - result["first_step_s"] >= 0.35  # two sleeps of 0.2 s
    assert 0.06 < result["peak_rss_gib"] < 1 and 0.06 < result["peak_rss_until_last_step_gib"] <= result["peak_rss_gib"]
    assert "launch to the end of step 1 s" in "\n".join(out)


def test_launch_of_a_sweep_times_its_last_step_line_of_all_jobs(capsys):
    """A sequential sweep's jobs each count from step 1: the last line is the last job's, not the first's."""
    import sys

    line = "print('[2026-11-30 03:54:27,061][ti_experiments.training.loop][INFO] - step {i}/2  loss 1.0', flush=True)"
    steps = "\n".join(f"time.sleep(0.2)\n{line.format(i=i)}" for i in (1, 2, 1, 2))
    assert main(["--launch", sys.executable, "-c", FAKE_TRAINING.format(steps=steps, code=0)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["last_step"] == 2
    assert result["last_line_s"] - result["last_step_s"] >= 0.35  # the second job's two steps


def test_launch_of_a_command_that_never_steps_is_one_line(capsys):
    import sys

    assert main(["--launch", sys.executable, "-c", FAKE_TRAINING.format(steps="", code=3)]) == 2
    err = capsys.readouterr().err.splitlines()  # the command's own output, passed through, then one line
    assert err[0] == "loading" and err[-1].startswith("error: ") and "printed no step line (exit code 3)" in err[-1]
    assert main(["--launch", "/nonexistent/python"]) == 2
    assert "could not start" in capsys.readouterr().err


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
