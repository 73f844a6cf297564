"""Training conditions the UNet exactly as the stock pipelines encode the same prompt."""

from __future__ import annotations

import torch
from PIL import Image

from ti_experiments.data import ConceptImages, DataSettings, TextualInversionDataset
from ti_experiments.models.embeddings import add_placeholder_tokens, unsplice
from ti_experiments.models import load_tiny_components
from ti_experiments.training.loss import text_conditioning


def _prepared(path, num_vectors=2):
    parts = load_tiny_components(str(path))
    for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders):
        module = add_placeholder_tokens(tokenizer, encoder, "<t>", "toy", num_vectors)
        with torch.no_grad():  # learned-looking rows, different in each encoder
            module.vectors.add_(torch.randn_like(module.vectors))
    return parts


def test_sdxl_conditioning_equals_the_sdxl_pipeline(tiny_sdxl_path, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    Image.new("RGB", (48, 32)).save(tmp_path / "a.png")
    images = ConceptImages(tmp_path, DataSettings(resolution=16, center_crop=True))
    parts = _prepared(tiny_sdxl_path)
    ds = TextualInversionDataset(1, 1, parts.tokenizer, "<t> <t>_1", "object", 1.0,
                                 fields=parts.family.item_fields(parts.tokenizers, images.time_ids),
                                 templates=["a photo of a {}"])
    item = ds[(0, 3)]
    batch = {k: (v.unsqueeze(0) if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
    with torch.no_grad():
        hidden, added = text_conditioning(parts, parts.text_encoder, batch, torch.float32, "cpu")

    for encoder in parts.text_encoders:
        unsplice(encoder)
    pipe = StableDiffusionXLPipeline(vae=parts.vae, text_encoder=parts.text_encoders[0],
                                     text_encoder_2=parts.text_encoders[1], tokenizer=parts.tokenizers[0],
                                     tokenizer_2=parts.tokenizers[1], unet=parts.unet,
                                     scheduler=parts.noise_scheduler, add_watermarker=False)
    with torch.no_grad():  # the pipeline expands "<t>" to "<t> <t>_1" itself, as the dataset wrote it
        embeds, _, pooled, _ = pipe.encode_prompt("a photo of a <t>", do_classifier_free_guidance=False)
    assert hidden.shape == (1, 77, 32 + 64) and added["text_embeds"].shape == (1, 64)
    assert torch.allclose(hidden, embeds, atol=1e-6)
    assert torch.allclose(added["text_embeds"], pooled, atol=1e-6)
    # flipped (flip_p=1): a 48x32 image's centre square, mirrored, starts 8 px from the left, 4 at 16 px
    time_ids = pipe._get_add_time_ids((32, 48), (0, 4), (16, 16), torch.float32,
                                      text_encoder_projection_dim=pooled.shape[-1])
    assert item["flipped"] and torch.equal(added["time_ids"], time_ids)


def test_sd_conditioning_is_the_last_hidden_state_and_nothing_else(tiny_model_path):
    parts = _prepared(tiny_model_path)
    ids = parts.tokenizer(["a <t> toy"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden, added = text_conditioning(parts, parts.text_encoder, {"input_ids": ids}, torch.float32, "cpu")
        assert added is None
        assert torch.equal(hidden, parts.text_encoder(ids)[0])
