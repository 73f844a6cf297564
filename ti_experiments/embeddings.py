"""Placeholder tokens: add them, initialise them, train only their rows, save and load them.

The diffusers example optimises the whole 49k-row embedding matrix and copies the frozen rows back
after every step. Here the new rows live in a small fp32 parameter spliced into the lookup, so the
frozen rows are never written (bit-identical by construction), the optimizer state is a few KB, and
adaptive optimizers see only the rows they train.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import TIError
from .files import atomic_path


def placeholder_tokens(placeholder: str, num_vectors: int) -> list[str]:
    """`<tok>`, `<tok>_1`, ... : the names diffusers' loader gives a multi-vector embedding."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]


class PlaceholderEmbedding(nn.Module):
    """A token-embedding lookup whose rows from `first_id` on come from a trainable fp32 parameter."""

    def __init__(self, base: nn.Embedding, first_id: int, num_vectors: int):
        super().__init__()
        if first_id + num_vectors != base.num_embeddings:
            raise ValueError("placeholder rows must be the last rows of the embedding matrix")
        self.base = base
        self.base.weight.requires_grad_(False)
        self.first_id = first_id
        self.vectors = nn.Parameter(base.weight.detach()[first_id:].clone().float())

    @property
    def weight(self) -> torch.Tensor:
        """The frozen matrix; code that inspects `get_input_embeddings().weight` keeps working."""
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids)
        is_new = input_ids >= self.first_id
        new_rows = nn.functional.embedding((input_ids - self.first_id).clamp(min=0), self.vectors)
        return torch.where(is_new.unsqueeze(-1), new_rows.to(out.dtype), out)

    @torch.no_grad()
    def merged(self) -> nn.Embedding:
        """The base embedding with the learned rows written in, for pipelines and saving."""
        self.base.weight[self.first_id :] = self.vectors.to(self.base.weight.dtype)
        return self.base


def _vocab_has(tokenizer, token: str) -> bool:
    """An added token, or a word the tokenizer already reads as one token ('toy' is 'toy</w>')."""
    return token in tokenizer.get_vocab() or len(tokenizer.encode(token, add_special_tokens=False)) == 1


def add_placeholder_tokens(
    tokenizer, text_encoder, placeholder_token: str, initializer_token: str, num_vectors: int
) -> PlaceholderEmbedding:
    """Add the tokens, start every new row as a copy of the initializer's row, and splice them in."""
    if not isinstance(num_vectors, int) or num_vectors < 1:
        raise TIError(f"concept.num_vectors is {num_vectors}", "set concept.num_vectors to an integer >= 1")
    if not placeholder_token or any(c.isspace() for c in str(placeholder_token)):
        raise TIError(
            f"concept.placeholder_token {placeholder_token!r} is empty or contains spaces",
            "use one word such as '<my-concept>'",
        )
    tokens = placeholder_tokens(placeholder_token, num_vectors)
    taken = [t for t in tokens if _vocab_has(tokenizer, t)]
    if taken:
        raise TIError(
            f"placeholder token {taken[0]!r} is already in the tokenizer's vocabulary",
            "choose a new word for concept.placeholder_token, such as '<my-concept>'",
        )
    init_ids = tokenizer.encode(initializer_token, add_special_tokens=False)
    if len(init_ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(init_ids)
        raise TIError(
            f"concept.initializer_token {initializer_token!r} is {len(init_ids)} tokens {pieces}, not one",
            "choose a single common word, such as 'toy', 'cat' or 'painting'",
        )
    added = tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if added != num_vectors or ids != list(range(ids[0], ids[0] + num_vectors)):
        raise TIError(
            f"the tokenizer did not add {tokens} as {num_vectors} new tokens",
            "choose another concept.placeholder_token",
        )
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    base = text_encoder.get_input_embeddings()
    with torch.no_grad():
        base.weight[ids] = base.weight[init_ids[0]].clone()
    module = PlaceholderEmbedding(base, first_id=ids[0], num_vectors=num_vectors)
    text_encoder.set_input_embeddings(module)
    return module


def unsplice(text_encoder) -> None:
    """Put a plain nn.Embedding (with the learned rows) back into the text encoder."""
    module = text_encoder.get_input_embeddings()
    if isinstance(module, PlaceholderEmbedding):
        text_encoder.set_input_embeddings(module.merged())


def save_learned_embeds(path: str | os.PathLike, placeholder_token: str, vectors: torch.Tensor) -> Path:
    """The diffusers layout: one key, the placeholder, a [num_vectors, dim] fp32 tensor."""
    tensor = vectors.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(tensor).all():
        raise TIError(
            f"the learned embedding for {placeholder_token} is not finite (NaN or inf); nothing was saved",
            "lower optimizer.lr or use hardware.mixed_precision=bf16",
        )
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({placeholder_token: tensor}, str(tmp), metadata={"format": "pt"})
    return path


def load_learned_embeds(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))
