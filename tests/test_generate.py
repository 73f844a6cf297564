"""Generating with learned concepts: from a run directory or a bare file, negative embeddings, foreign
formats, SDXL, reproducible seeds, and one clean line for each bad input. Tiny models, 32 px (SDXL 64), 2 steps."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO, TINY_RUN, compose
from ti_experiments.models.embeddings import save_a1111, save_learned_embeds, save_sdxl
from ti_experiments.errors import TIError
from ti_experiments.experiment import run
from ti_experiments.models.generation import generate, main

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each

FAST = dict(steps=2, guidance=7.5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_path):
    return run(compose(*TINY_RUN, "train.max_steps=2", output_dir=tmp_path_factory.mktemp("run")))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def rows(n, d=32, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_from_a_run_directory_with_files_that_remake_each_image(run_dir, tmp_path):
    out = tmp_path / "out"
    images = generate("a photo of a <demo-toy>", run_dir, num_images=2, seed=5, out=out, **FAST)
    assert [im.size for im in images] == [(32, 32), (32, 32)]  # the tiny model's resolution
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["0000.json", "0000.png", "0001.json", "0001.png"]
    record = json.loads((out / "0001.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert record["prompt"] == "a photo of a <demo-toy>" and record["seed"] == 6
    assert record["settings"]["steps"] == 2 and record["settings"]["width"] == 32
    assert record["settings"]["model"] == str(compose("model=tiny").model.pretrained_model_name_or_path)
    assert record["embeddings"] == [{"path": str(run_dir.resolve()), "token": "<demo-toy>", "format": "diffusers",
                                     "negative": False, "sha256": summary["learned_embeds_sha256"]}]
    assert json.loads(images[1].info["ti_experiments"]) == record
    assert json.loads(Image.open(out / "0001.png").text["ti_experiments"]) == record  # also inside the PNG
    # image i uses seed + i: the second picture is made again alone, bit for bit, from its record
    again = generate(record["prompt"], run_dir, num_images=1, seed=record["seed"], **FAST)[0]
    assert np.array_equal(pixels(again), pixels(images[1]))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))
    # a second call into the same folder numbers on instead of overwriting
    generate("a photo of a <demo-toy>", run_dir, seed=5, out=out, **FAST)
    assert (out / "0002.png").is_file() and json.loads((out / "0000.json").read_text())["seed"] == 5


def test_the_learned_rows_are_the_ones_used(run_dir, tiny_model_path):
    from ti_experiments.models.embeddings import load_into_pipeline
    from ti_experiments.records.run_dir import read_embedding
    from ti_experiments.models import load_pipeline

    pipe = load_pipeline(str(tiny_model_path))
    assert load_into_pipeline(pipe, read_embedding(run_dir)) == ["<demo-toy>"]
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<demo-toy>")]
    assert torch.equal(row, load_file(run_dir / "learned_embeds.safetensors")["<demo-toy>"][0])


def test_from_a_bare_file_needs_the_model_named(run_dir, tmp_path, tiny_model_path):
    bare = shutil.copy(run_dir / "learned_embeds.safetensors", tmp_path / "toy.safetensors")
    with pytest.raises(TIError, match="bare .* embedding.*pass --model"):
        generate("a <demo-toy>", bare, **FAST)
    image = generate("a <demo-toy>", bare, model=str(tiny_model_path), seed=1, **FAST)[0]
    from_run = generate("a <demo-toy>", run_dir, seed=1, **FAST)[0]
    assert np.array_equal(pixels(image), pixels(from_run))
    assert generate("a <demo-toy>", bare, model="tiny", seed=1, **FAST)[0].size == (32, 32)  # a conf/model option


def test_a_negative_embedding_changes_the_picture_at_the_same_seed(run_dir, tmp_path):
    negative = save_a1111(tmp_path / "bad-stuff.safetensors", rows(2, seed=3) * 3)
    plain = [generate("a <demo-toy>", run_dir, seed=7, **FAST)[0] for _ in range(2)]
    with_negative = generate("a <demo-toy>", run_dir, negative_embeddings=[negative], seed=7, **FAST)[0]
    assert np.array_equal(pixels(plain[0]), pixels(plain[1]))  # same seed twice: the same picture
    assert not np.array_equal(pixels(plain[0]), pixels(with_negative))
    record = json.loads(with_negative.info["ti_experiments"])
    assert record["negative_prompt_used"] == "bad-stuff"
    assert record["embeddings"][1]["token"] == "bad-stuff" and record["embeddings"][1]["negative"] is True
    both = generate("a <demo-toy>", run_dir, negative_prompt="blurry", negative_embeddings=[negative], seed=7,
                    **FAST)[0]
    assert json.loads(both.info["ti_experiments"])["negative_prompt_used"] == "blurry, bad-stuff"
    with pytest.raises(TIError, match="no effect at guidance"):
        generate("a <demo-toy>", run_dir, negative_embeddings=[negative], steps=2, guidance=1.0)


def test_several_embeddings_and_foreign_formats(run_dir, tmp_path):
    a1111_pt = tmp_path / "old.pt"
    torch.save({"string_to_param": {"*": rows(1, seed=1)}, "name": "oldname"}, a1111_pt)
    folder = tmp_path / "concept"  # sd-concepts-library layout with the legacy .bin
    folder.mkdir()
    torch.save({"<key>": rows(3, seed=2)}, folder / "learned_embeds.bin")
    (folder / "token_identifier.txt").write_text("<named>")
    a1111 = save_a1111(tmp_path / "my-style.safetensors", rows(2, seed=4))
    image = generate("a <demo-toy> and oldname in my-style with <named>", [run_dir, a1111_pt, folder, a1111],
                     seed=0, **FAST)[0]
    tokens = [(e["token"], e["format"]) for e in json.loads(image.info["ti_experiments"])["embeddings"]]
    assert tokens == [("<demo-toy>", "diffusers"), ("oldname", "a1111-pt"), ("<named>", "diffusers"),
                      ("my-style", "a1111")]


def test_the_same_token_twice_is_refused_and_a_rename_fixes_it(run_dir):
    with pytest.raises(TIError, match="'<demo-toy>' of .* is already in the tokenizer's vocabulary"):
        generate("a <demo-toy>", [run_dir, run_dir], seed=0, **FAST)
    image = generate("a <demo-toy> and <other>", [run_dir, f"{run_dir}=<other>"], seed=0, **FAST)[0]
    assert [e["token"] for e in json.loads(image.info["ti_experiments"])["embeddings"]] == ["<demo-toy>", "<other>"]


def test_embeddings_of_another_family_are_refused(run_dir, tmp_path):
    wide = save_learned_embeds(tmp_path / "sd1.safetensors", "<wide>", torch.zeros(1, 768))
    with pytest.raises(TIError, match=r"SD 1.x embedding and does not fit this model \(text encoder width 32\)"):
        generate("a <wide>", [run_dir, wide], **FAST)
    xl = save_sdxl(tmp_path / "xl.safetensors", rows(1), rows(1))
    with pytest.raises(TIError, match="does not fit this model"):
        generate("a <xl>", [run_dir, f"{xl}=<xl>"], **FAST)


def test_schedulers_are_reproducible(run_dir):
    first, second = (generate("a <demo-toy>", run_dir, scheduler="euler_a", seed=2, **FAST)[0] for _ in range(2))
    assert np.array_equal(pixels(first), pixels(second))
    assert json.loads(first.info["ti_experiments"])["settings"]["scheduler_class"] == "EulerAncestralDiscreteScheduler"
    with pytest.raises(TIError, match="scheduler 'nope' is unknown"):
        generate("a <demo-toy>", run_dir, scheduler="nope", **FAST)


# ---------------------------------------------------------------- SDXL (a tiny pipeline built here)

@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    """diffusers' test-sized SDXL parts (two CLIP text encoders, a text_time UNet) and the repo's tiny tokenizer."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ti_experiments.models.tiny import MODEL_MAX_LENGTH, write_tokenizer_files

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    write_tokenizer_files(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", model_max_length=MODEL_MAX_LENGTH)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=32 + 32, norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, projection_dim=32, max_position_embeddings=MODEL_MAX_LENGTH,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))
    pipe.save_pretrained(folder / "model")
    return folder / "model"


def test_sdxl_loads_each_half_into_its_encoder_and_generates(tiny_sdxl, tmp_path):
    from ti_experiments.models.embeddings import load_into_pipeline
    from ti_experiments.records.run_dir import read_embedding
    from ti_experiments.models import load_pipeline

    clip_l, clip_g = rows(2, seed=1), rows(2, seed=2)
    xl = save_sdxl(tmp_path / "xl-thing.safetensors", clip_l, clip_g)
    pipe = load_pipeline(str(tiny_sdxl))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert load_into_pipeline(pipe, read_embedding(xl), "<xl>") == ["<xl>", "<xl>_1"]
    for tokenizer, encoder, want in ((pipe.tokenizer, pipe.text_encoder, clip_l),
                                     (pipe.tokenizer_2, pipe.text_encoder_2, clip_g)):
        ids = tokenizer.convert_tokens_to_ids(["<xl>", "<xl>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], want)

    negative = save_sdxl(tmp_path / "bad-xl.safetensors", rows(1, seed=3) * 3, rows(1, seed=4) * 3)
    plain = generate("a photo of xl-thing", xl, model=str(tiny_sdxl), seed=0, **FAST)[0]
    with_negative = generate("a photo of xl-thing", xl, negative_embeddings=[negative], model=str(tiny_sdxl),
                             seed=0, **FAST)[0]
    assert plain.size == (64, 64)
    assert json.loads(plain.info["ti_experiments"])["settings"]["pipeline"] == "StableDiffusionXLPipeline"
    assert not np.array_equal(pixels(plain), pixels(with_negative))
    sd1 = save_learned_embeds(tmp_path / "sd.safetensors", "<sd>", rows(1))
    with pytest.raises(TIError, match="does not fit this model"):
        generate("a <sd>", sd1, model=str(tiny_sdxl), **FAST)


# ---------------------------------------------------------------- the command on bad input

def assert_one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "; fix: " in lines[0] and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_cli_not_an_embedding(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not an embedding")
    assert_one_line(capsys, main([str(junk), "a prompt", "--out", str(tmp_path / "o")]), "not a readable embedding")
    assert not (tmp_path / "o").exists()


def test_cli_token_already_used(run_dir, tmp_path, capsys):
    code = main([str(run_dir), str(run_dir), "a <demo-toy>", "--steps", "2", "--out", str(tmp_path / "o")])
    assert_one_line(capsys, code, "already in the tokenizer's vocabulary", "PATH=TOKEN")


def test_cli_missing_base_model(run_dir, tmp_path, capsys):
    moved = shutil.copytree(run_dir, tmp_path / "run")
    config = moved / "resolved_config.yaml"
    config.write_text(config.read_text().replace(str(compose("model=tiny").model.pretrained_model_name_or_path),
                                                 "/nowhere/sd-model"))
    assert_one_line(capsys, main([str(moved), "a <demo-toy>"]), "'/nowhere/sd-model' does not exist")
    assert_one_line(capsys, main([str(run_dir), "a <demo-toy>", "--model", "no-such/model-anywhere"]),
                    "HF_HUB_OFFLINE")
    bare = shutil.copy(run_dir / "learned_embeds.safetensors", tmp_path / "x.safetensors")
    assert_one_line(capsys, main([str(bare), "a <demo-toy>"]), "pass --model")


@pytest.mark.slow
def test_cli_end_to_end(run_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ti_experiments.generate", str(run_dir), "a photo of a <demo-toy>", "--steps", "2",
               "--num-images", "2", "--seed", "0", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["0000.json", "0000.png", "0001.json", "0001.png"]
    # the recorded command makes the second picture again, alone
    remake = shlex.split(json.loads((out / "0001.json").read_text())["command"])
    assert remake[:3] == ["python", "-m", "ti_experiments.generate"]
    again = tmp_path / "again"
    result = subprocess.run([sys.executable, *remake[1:], "--out", str(again)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.array_equal(pixels(Image.open(again / "0000.png")), pixels(Image.open(out / "0001.png")))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    result = subprocess.run([*command[:3], str(junk), "a prompt"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr


def test_a_folder_being_written_by_another_generate_is_refused_and_numbering_goes_on(run_dir, tmp_path):
    from ti_experiments.records.files import folder_lock

    out = tmp_path / "shared"
    (out).mkdir()
    (out / "0004.json").write_text("{}")  # a record whose image is gone still keeps its number
    with folder_lock(out, "a generate command", "wait"):
        with pytest.raises(TIError, match=rf"^{out} is in use by a generate command \(process \d+\); fix: wait for it"):
            generate("a photo of a <demo-toy>", run_dir, seed=1, out=out, **FAST)
    generate("a photo of a <demo-toy>", run_dir, seed=1, out=out, **FAST)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["0004.json", "0005.json", "0005.png"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(seed=99999999999999999999999), "seed=99999999999999999999999 is not an integer between 0 and 4294967295"),
    (dict(seed=-1), "seed=-1 is not an integer between 0 and"),
    (dict(seed=2**32 - 1, num_images=2), r"between 0 and 4294967294 \(image i uses seed \+ i"),
    (dict(seed="3"), "seed='3' is not an integer"),
    (dict(guidance=float("nan")), "guidance=nan is not a finite number"),
    (dict(width=1 << 20, height=1 << 20), r"a 1048576x1048576 image needs at least \d+\.\d GiB of memory"),
])
def test_values_out_of_range_are_refused_before_the_model_loads(run_dir, tmp_path, monkeypatch, kwargs, message):
    import ti_experiments.models.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(TIError, match=message):
        generate("a photo of a <demo-toy>", run_dir, out=tmp_path / "out", **{**FAST, **kwargs})
    assert not (tmp_path / "out").exists()


def test_cli_huge_seed_and_nan_guidance_are_one_line(run_dir, tmp_path, capsys):
    for extra in (["--seed", "99999999999999999999999"], ["--guidance", "nan"], ["--steps", "abc"]):
        try:
            code = main([str(run_dir), "a photo of a <demo-toy>", "--out", str(tmp_path / "o"), *extra])
        except SystemExit as exit_:  # argparse's way out
            code = exit_.code
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "; fix: " in err, err
    assert not (tmp_path / "o").exists()
