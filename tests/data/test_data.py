"""Concept images, training items and the latent cache."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from ti_experiments.data import (
    ConceptImages, DataSettings, EpochSampler, LatentCache, TEMPLATES, TextualInversionDataset,
)
from ti_experiments.errors import TIError


def _img(path, size=(40, 20), color=(255, 0, 0)):
    Image.new("RGB", size, color).save(path)
    return path


def test_images_are_cropped_resized_and_scaled(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 30, 20))  # white centre square, black sides
    img.save(tmp_path / "a.png")
    cropped = ConceptImages(tmp_path, DataSettings(resolution=16, center_crop=True))
    squashed = ConceptImages(tmp_path, DataSettings(resolution=16, center_crop=False))
    assert cropped.pixels.shape == (1, 3, 16, 16)
    assert cropped.pixels.min() >= -1 and cropped.pixels.max() <= 1
    assert torch.allclose(cropped.pixels, torch.ones_like(cropped.pixels), atol=0.02)  # only the centre
    assert squashed.pixels[0, :, 8, 0].max() < -0.9  # the black border is kept when squashing


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, caplog):
    _img(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        images = ConceptImages(tmp_path, DataSettings(resolution=8))
    assert [p.name for p in images.paths] == ["good.png"]
    assert "broken.png" in caplog.text and "notes.txt" in caplog.text


def test_grayscale_palette_and_alpha_images_become_rgb(tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "l.png")
    Image.new("P", (8, 8), 3).save(tmp_path / "p.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(tmp_path / "rgba.png")
    assert ConceptImages(tmp_path, DataSettings(resolution=8)).pixels.shape == (3, 3, 8, 8)


@pytest.mark.parametrize("setup,message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "is empty"),
    (lambda d: (d / "x.png").write_bytes(b"junk") and d, "no file"),
])
def test_bad_folders_are_refused(tmp_path, setup, message):
    folder = setup(tmp_path)
    with pytest.raises(TIError, match=message):
        ConceptImages(folder if folder is not None else tmp_path, DataSettings(resolution=8))


def test_bad_data_settings_are_refused():
    with pytest.raises(TIError, match="interpolation"):
        DataSettings(interpolation="cubic-ish")
    with pytest.raises(TIError, match="flip_p"):
        DataSettings(flip_p=2)
    with pytest.raises(TIError, match="repeats"):
        DataSettings(repeats=0)


class _Tok:
    model_max_length = 8

    def __call__(self, text, **kw):
        class R:
            input_ids = torch.tensor([[len(text)] * 8])
        self.last = text
        return R()


def test_dataset_length_prompts_and_flips():
    tok = _Tok()
    ds = TextualInversionDataset(3, 5, tok, "<x> <x>_1", "style", flip_p=1.0)
    assert len(ds) == 15
    item = ds[(7, 123)]
    assert item["image_index"] == 1 and item["flipped"] is True
    assert "<x> <x>_1" in tok.last and tok.last.replace("<x> <x>_1", "{}") in TEMPLATES["style"]
    assert not TextualInversionDataset(3, 5, tok, "<x>", "object", flip_p=0.0)[(0, 1)]["flipped"]
    flips = [TextualInversionDataset(1, 1, tok, "<x>", "object", 0.5)[(0, s)]["flipped"] for s in range(400)]
    assert 150 < sum(flips) < 250


def test_sampler_is_a_reproducible_shuffle_per_epoch():
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    assert list(EpochSampler(10, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_latent_cache_draws_from_the_vae_distribution(tiny_model_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model_path, subfolder="vae")
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    cache = LatentCache.build(vae, pixels, with_flips=True, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        mean = vae.encode(pixels.flip(-1)).latent_dist.mean
    assert torch.allclose(cache.mean[1], mean, atol=1e-5)
    sample = cache.sample(torch.tensor([1, 0]), torch.tensor([True, False]))
    assert sample.shape == (2, 4, 8, 8)
    assert not torch.equal(sample, cache.sample(torch.tensor([1, 0]), torch.tensor([True, False])))


def test_latent_cache_encodes_an_image_when_first_drawn_the_same_as_all_at_once(tiny_model_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model_path, subfolder="vae")
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    eager = LatentCache.build(vae, pixels, with_flips=True, device="cpu", dtype=torch.float32)
    released = []
    lazy = LatentCache(vae, pixels, with_flips=True, device="cpu", dtype=torch.float32,
                       when_full=lambda: released.append(True))
    eps = torch.randn(2, *lazy.latent_shape)
    first = lazy.sample(torch.tensor([2, 0]), torch.tensor([True, False]), eps=eps)
    assert lazy.cached.sum() == 2 and lazy.cached[1, 2] and lazy.cached[0, 0] and not released
    assert torch.equal(first, eager.sample(torch.tensor([2, 0]), torch.tensor([True, False]), eps=eps))
    lazy.sample(torch.arange(3), torch.zeros(3, dtype=torch.bool))
    lazy.sample(torch.arange(3), torch.ones(3, dtype=torch.bool))
    assert released == [True] and lazy.vae is None  # the encoder may go once everything is cached
    assert torch.equal(lazy.mean, eager.mean) and torch.equal(lazy.std, eager.std)
    lazy.sample(torch.tensor([1]), torch.tensor([True]))
    assert released == [True]
    # without flips a mirrored draw is the image itself, and one pass over the images fills the cache
    plain = LatentCache(vae, pixels, with_flips=False, device="cpu", dtype=torch.float32)
    assert torch.equal(plain.sample(torch.tensor([1]), torch.tensor([True]), eps=eps[:1]),
                       eager.sample(torch.tensor([1]), torch.tensor([False]), eps=eps[:1]))
    plain.sample(torch.tensor([0, 2]), torch.tensor([False, True]))
    assert plain.full and plain.vae is None


def test_16_bit_cmyk_and_exif_rotated_images_are_converted(tmp_path):
    import numpy as np

    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "a16.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "b.jpg")  # red in CMYK
    rotated = Image.new("RGB", (16, 8), (0, 0, 0))
    rotated.paste((255, 255, 255), (0, 0, 8, 8))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    rotated.save(tmp_path / "c.jpg", exif=exif)
    images = ConceptImages(tmp_path, DataSettings(resolution=8, center_crop=False, interpolation="nearest"))
    px = {p.name: images.pixels[i] for i, p in enumerate(images.paths)}
    assert px["a16.png"].min() > 0.99  # 65535 is white, not clipped garbage
    assert px["b.jpg"][0].mean() > 0.8 and px["b.jpg"][1].mean() < -0.8  # red
    # displayed upright the image is 8 wide x 16 tall with the white half on top
    assert px["c.jpg"][:, :4].mean() > 0.8 and px["c.jpg"][:, 4:].mean() < -0.8


def test_small_images_are_upscaled_with_a_warning(tmp_path, caplog):
    _img(tmp_path / "small.png", size=(4, 4))
    with caplog.at_level(logging.WARNING):
        images = ConceptImages(tmp_path, DataSettings(resolution=16))
    assert images.pixels.shape == (1, 3, 16, 16) and "upscaling" in caplog.text


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    Image.new("RGB", (4096, 4096), (10, 200, 30)).save(tmp_path / "huge.jpg", quality=90)
    images = ConceptImages(tmp_path, DataSettings(resolution=64))
    assert images.pixels.shape == (1, 3, 64, 64)
    assert images.pixels[0, 1].mean() > 0.4  # green survives


# ---------------------------------------------------------------- SDXL size and crop conditioning

def test_time_ids_hold_the_real_size_and_the_centre_crop(tmp_path):
    _img(tmp_path / "wide.png", size=(41, 20))  # 41 wide, 20 tall: the centre square starts at x=10
    _img(tmp_path / "tall.png", size=(10, 30))
    cropped = ConceptImages(tmp_path, DataSettings(resolution=16, center_crop=True))
    squashed = ConceptImages(tmp_path, DataSettings(resolution=16, center_crop=False))
    assert [p.name for p in cropped.paths] == ["tall.png", "wide.png"]
    assert cropped.time_ids.shape == (2, 2, 6)  # [as is / mirrored, image, 6]
    # (original h, w), crop (top, left) in the pixels of the image scaled so the square is 16, (target h, w)
    assert cropped.time_ids[0].tolist() == [[30, 10, 16, 0, 16, 16], [20, 41, 0, 8, 16, 16]]
    # mirrored, the kept square of the wide image starts 11 pixels from the (new) left: 11 * 16/20 = 8.8
    assert cropped.time_ids[1].tolist() == [[30, 10, 16, 0, 16, 16], [20, 41, 0, 9, 16, 16]]
    # without center_crop the whole image is squashed: nothing is cropped, the real size is kept
    assert squashed.time_ids[0].tolist() == squashed.time_ids[1].tolist() == [[30, 10, 0, 0, 16, 16],
                                                                              [20, 41, 0, 0, 16, 16]]


def test_time_ids_use_the_upright_real_size_of_rotated_and_huge_photos(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 16 x 8, displayed 8 wide x 16 tall
    Image.new("RGB", (16, 8)).save(tmp_path / "a-rotated.jpg", exif=exif)
    Image.new("RGB", (4096, 2048), (10, 200, 30)).save(tmp_path / "b-huge.jpg", quality=90)  # decoded reduced
    images = ConceptImages(tmp_path, DataSettings(resolution=64, center_crop=True))
    assert images.time_ids[0, 0, :2].tolist() == [16, 8]
    # the square starts (4096 - 2048) / 2 = 1024 real pixels in, which is 32 once the square is 64 pixels
    assert images.time_ids[0, 1].tolist() == [2048, 4096, 0, 32, 64, 64]


def test_sdxl_items_carry_both_tokenizations_and_their_images_time_ids():
    tok, tok_2 = _Tok(), _Tok()
    time_ids = torch.arange(2 * 3 * 6, dtype=torch.float32).view(2, 3, 6)
    from ti_experiments.models.sdxl import StableDiffusionXL

    ds = TextualInversionDataset(3, 5, tok, "<x>", "object", 0.5,
                                 fields=StableDiffusionXL().item_fields([tok, tok_2], time_ids))
    for seed in range(20):
        item = ds[(7, seed)]
        assert tok.last == tok_2.last  # one prompt, two tokenizers
        assert torch.equal(item["time_ids"], time_ids[int(item["flipped"]), 1])
        assert torch.equal(item["input_ids_2"], item["input_ids"])
    assert "time_ids" not in TextualInversionDataset(3, 5, tok, "<x>", "object", 0.5)[(0, 1)]


def _captioned_folder(tmp_path, captions: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, (name, caption) in enumerate(captions.items()):
        _img(tmp_path / f"{name}.png", color=(i * 40, 0, 0))
        if caption is not None:
            (tmp_path / f"{name}.txt").write_text(caption + "\n")
    return tmp_path


def test_captions_are_read_beside_each_image_and_follow_it(tmp_path, caplog):
    folder = _captioned_folder(tmp_path, {"b": "a {} in\nthe snow", "a": "a [name] on grass", "c": "{} at night"})
    with caplog.at_level(logging.WARNING):
        images = ConceptImages(folder, DataSettings(resolution=8, captions="file"))
    assert [p.name for p in images.paths] == ["a.png", "b.png", "c.png"]  # caption files are not images
    assert images.captions == ["a [name] on grass", "a {} in the snow", "{} at night"]
    assert "skipping" not in caplog.text
    tok = _Tok()
    ds = TextualInversionDataset(3, 4, tok, "<x>", "object", 0.0, captions=images.captions, caption_mode="file")
    for key in range(12):  # the item of image i gets the caption of image i, whatever the repeat
        item = ds[(key, key)]
        assert tok.last == ["a <x> on grass", "a <x> in the snow", "<x> at night"][item["image_index"]]


def test_a_missing_caption_is_an_error_in_file_mode_and_the_template_alone_with_filewords(tmp_path, caplog):
    folder = _captioned_folder(tmp_path, {"a": "a {} on grass", "b": None, "c": ""})
    with pytest.raises(TIError, match=r"2 of 3 images have no caption, e.g. .*b.png \(no b.txt or an empty one\)"):
        ConceptImages(folder, DataSettings(resolution=8, captions="file"))
    with caplog.at_level(logging.WARNING):
        images = ConceptImages(folder, DataSettings(resolution=8, captions="filewords"))
    assert images.captions == ["a {} on grass", None, None] and "2 of 3 images have no caption" in caplog.text
    assert ConceptImages(folder, DataSettings(resolution=8)).captions == [None, None, None]  # mode none reads none


def test_a_caption_that_pushes_the_placeholder_past_the_limit_is_found(tiny_model_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model_path, subfolder="tokenizer")
    tok.add_tokens(["<x>"])
    long = " ".join(["red"] * 100)
    ds = TextualInversionDataset(2, 1, tok, "<x>", "object", 0.0, captions=[f"{{}} {long}", f"{long} {{}}"],
                                 caption_mode="file")
    assert ds.cut_placeholders() == [1]


def test_a_tiny_run_trains_on_the_captions(tmp_path, monkeypatch):
    from conftest import TINY_RUN, compose
    from ti_experiments.data.templates import Prompts
    from ti_experiments.experiment import run

    folder = _captioned_folder(tmp_path / "images", {"one": "a {} on a red carpet", "two": "a {} in a blue box"})
    seen = []
    original = Prompts.__call__
    monkeypatch.setattr(Prompts, "__call__", lambda self, rng, i: seen.append(original(self, rng, i)) or seen[-1])
    run_dir = run(compose(*TINY_RUN, f"concept.train_data_dir={folder}", "data.captions=filewords",
                          "data.templates=['a photo of {}, [filewords]']", "data.resolution=64",
                          output_dir=tmp_path / "run"))
    assert (run_dir / "learned_embeds.safetensors").is_file()
    assert set(seen) == {"a photo of <demo-toy>, a <demo-toy> on a red carpet",
                         "a photo of <demo-toy>, a <demo-toy> in a blue box"}


def test_placeholder_vectors_that_cannot_reach_the_text_encoder_are_refused(tiny_model_path):
    from transformers import CLIPTokenizer

    from ti_experiments.experiment import check_room

    tok = CLIPTokenizer.from_pretrained(tiny_model_path, subfolder="tokenizer")
    tokens = ["<x>"] + [f"<x>_{i}" for i in range(1, 100)]
    tok.add_tokens(tokens)

    def dataset(n: int):
        return TextualInversionDataset(1, 1, tok, " ".join(tokens[:n]), "object", 0.0)

    assert dataset(4).placeholder_room() is None
    check_room(dataset(4), 4, captions=False)
    fit, prompt = dataset(100).placeholder_room()
    assert 60 < fit < 75 and "<x>_1" in prompt  # the longest template leaves room for `fit`
    assert dataset(fit).placeholder_room() is None
    with pytest.raises(TIError, match=rf"only {fit} of concept.num_vectors=100 .* 77 positions.*"
                                      rf"fix: use concept.num_vectors={fit} or fewer"):
        check_room(dataset(100), 100, captions=False)
