"""Training items: (image, flip, prompt) drawn reproducibly from the epoch and position alone.

Every random choice of an item comes from its own seed, so a resumed run sees exactly the items the
uninterrupted run would have seen, whatever the worker count or the state of the global RNG.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset, Sampler

from ..models.family import tokenize
from .templates import TEMPLATES, Prompts, with_filewords


class TextualInversionDataset(Dataset):
    """len = images x repeats; item = image index, flip flag and a tokenized prompt (template, caption or both).

    `fields(text, image index, flipped)` makes the model's inputs of an item: the model family's
    `ItemFields` (every tokenizer's ids, and per-image conditioning such as SDXL's time ids); by
    default the prompt's `input_ids` from `tokenizer`.
    """

    def __init__(self, num_images: int, repeats: int, tokenizer, placeholder_string: str,
                 learnable_property: str, flip_p: float, *, fields=None,
                 captions: list[str | None] | None = None, caption_mode: str = "none",
                 templates: list[str] | None = None):
        self.fields = fields
        self.num_images = num_images
        self.repeats = repeats
        self.tokenizer = tokenizer
        self.placeholder_string = placeholder_string
        if templates is None:
            templates = TEMPLATES[learnable_property]
            templates = with_filewords(templates) if caption_mode == "filewords" else templates
        self.templates = templates
        self.prompts = Prompts(caption_mode, templates, placeholder_string, captions)
        self.flip_p = flip_p

    def __len__(self) -> int:
        return self.num_images * self.repeats

    def placeholder_room(self) -> tuple[int, str] | None:
        """Where some prompt leaves room for fewer placeholder vectors than it holds: the number that
        fit in the text encoder's positions with the tightest prompt, and that prompt; None when all fit."""
        ids = set(self.tokenizer.convert_tokens_to_ids(self.placeholder_string.split()))
        limit = self.tokenizer.model_max_length
        tightest = None
        for i in range(self.num_images):
            for text in self.prompts.all_texts(i):
                kept = self.tokenizer(text, truncation=True, max_length=limit).input_ids
                fit = sum(t in ids for t in kept)
                if fit < len(ids) and (tightest is None or fit < tightest[0]):
                    tightest = (fit, text)
        return tightest

    def cut_placeholders(self) -> list[int]:
        """Images with a prompt so long that the text encoder's limit cuts off (some of) the placeholder:
        such an item teaches nothing about the vectors it drops."""
        last = self.tokenizer.convert_tokens_to_ids(self.placeholder_string.split()[-1])
        limit = self.tokenizer.model_max_length
        return [i for i in range(self.num_images)
                if any(last not in self.tokenizer(t, truncation=True, max_length=limit).input_ids
                       for t in self.prompts.all_texts(i))]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        rng = random.Random(seed)
        text = self.prompts(rng, index % self.num_images)
        flipped = rng.random() < self.flip_p
        image = index % self.num_images
        fields = (self.fields(text, image, flipped) if self.fields is not None
                  else {"input_ids": tokenize(self.tokenizer, text)[0]})
        # the training step draws this item's latent sample, noise and timestep from its seed
        return {"image_index": image, "flipped": flipped, "seed": seed, **fields}


class EpochSampler(Sampler):
    """A shuffle per epoch derived from (seed, epoch); yields (index, item seed) keys."""

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=gen).tolist()
        for position, index in enumerate(order):
            yield index, ((self.seed * 1_000_003 + self.epoch) * 1_000_033 + position) % 2**31
