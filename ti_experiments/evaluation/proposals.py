"""Initializer words proposed from the concept's images (`evaluation.initializer_proposals`), scored beside
the user's own, or alone with `concept.initializer_token: auto`.

The evaluation's CLIP (`evaluation.clip_model`: DreamBench's CLIP, the toy world's judge, the tiny
random one) reads the concept's images and the vocabulary's words: the words whose prompt ("a photo of
a {word}", or a style's "a painting in the style of {word}") it finds closest to the mean of the images
are the candidates. The vocabulary is the model's own tokenizer: whole words of at least three
letters that are one token, the first `VOCABULARY_LIMIT` in its merge order (a BPE tokenizer learns
frequent words first). The held-out loss then chooses among them (`training.initializer`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

VOCABULARY_LIMIT = 5000  # words read by CLIP: about a minute on a CPU for CLIP ViT-B/32, seconds on a GPU
PROMPTS = {"object": "a photo of a {}", "style": "a painting in the style of {}"}
END_OF_WORD = "</w>"


def vocabulary_words(tokenizers, limit: int = VOCABULARY_LIMIT) -> list[str]:
    """Whole words of the first tokenizer, in id order, that every tokenizer reads as one token."""
    vocab = tokenizers[0].get_vocab()
    words = []
    for token, _ in sorted(vocab.items(), key=lambda item: item[1]):
        word = token[: -len(END_OF_WORD)] if token.endswith(END_OF_WORD) else None
        if word and len(word) >= 3 and word.isascii() and word.isalpha():
            if all(len(t.encode(word, add_special_tokens=False)) == 1 for t in tokenizers):
                words.append(word)
                if len(words) >= limit:
                    break
    return words


@torch.no_grad()
def propose_words(clip_model: str, image_paths: list[Path], tokenizers, learnable_property: str,
                  count: int, device: str = "cpu") -> list[str]:
    """The `count` vocabulary words CLIP finds closest to the images, closest first."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from ..data.images import _open_rgb
    from .image_metrics import _local_or_download, _unit

    words = vocabulary_words(tokenizers)
    if not words:
        return []
    path = _local_or_download(str(clip_model), "clip_model")
    clip = CLIPModel.from_pretrained(path, use_safetensors=True).to(device).eval()
    clip_tokenizer = AutoTokenizer.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    pixels = processor(images=[_open_rgb(p, 512)[0] for p in image_paths], return_tensors="pt")["pixel_values"]
    image = _unit(_unit(clip.get_image_features(pixel_values=pixels.to(device)).pooler_output).mean(0))
    template = PROMPTS.get(learnable_property, PROMPTS["object"])
    similarity = []
    for start in range(0, len(words), 256):
        texts = [template.format(w) for w in words[start:start + 256]]
        tokens = clip_tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        similarity.append(_unit(clip.get_text_features(**tokens).pooler_output) @ image)
    order = torch.cat(similarity).argsort(descending=True)[:count].tolist()
    proposed = [words[i] for i in order]
    log.info("initializer proposals: %s proposes %s (of %d words)", Path(str(clip_model)).name or clip_model,
             ", ".join(proposed), len(words))
    return proposed
