"""Placeholder tokens: add them, initialise them, train only their rows, save and load them.

The diffusers example optimises the whole 49k-row embedding matrix and copies the frozen rows back
after every step. Here the new rows live in a small fp32 parameter spliced into the lookup, so the
frozen rows are never written (bit-identical by construction), the optimizer state is a few KB, and
adaptive optimizers see only the rows they train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import TIError, cause
from ..records.files import atomic_path
from .torch_files import read_torch_file

PICKLED_EMBEDDING = (".pt", ".bin", ".ckpt", ".pth")


def convert_command(path: Path) -> str:
    """The one-time conversion of a .pt/.bin this project's reader refuses (an older pickle format, or
    pickled classes) to safetensors beside it, never over an existing file. Only for a file from someone
    the user trusts: torch.load runs code the file names, which is why this project never calls it."""
    import json
    import shlex

    source, target = json.dumps(str(path)), json.dumps(str(path.with_suffix(".safetensors")))  # Python literals
    code = (f'import torch, safetensors.torch as s; d = torch.load({source}, weights_only=True); '
            'd = {"emb_params": [*d["string_to_param"].values()][0]} if "string_to_param" in d else d; '
            f'open({target}, "xb").write(s.save({{k: v.contiguous() for k, v in d.items()}}))')
    return f"python -c {shlex.quote(code)}"


# a token names files (`<token>.safetensors`, `...-steps-N.safetensors`): well below a file name's 255 bytes
MAX_TOKEN_LENGTH = 100


def check_token(token, key: str, fix: str) -> str:
    """A token a prompt can carry and a file can be named after: one word of printable characters (no
    spaces, control characters or NUL) of at most MAX_TOKEN_LENGTH characters."""
    import unicodedata

    text = token if isinstance(token, str) else ""
    if not text or any(c.isspace() for c in text):
        raise TIError(f"{key} {token!r} is empty or contains spaces", fix)
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")), None)
    if bad is not None:
        raise TIError(f"{key} {token!r} contains the control or unprintable character {bad!r}", fix)
    if len(text) > MAX_TOKEN_LENGTH:
        raise TIError(f"{key} is {len(text)} characters long, more than {MAX_TOKEN_LENGTH} (it names the "
                      "embedding's files)", fix)
    return text


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
    tokenizer, text_encoder, placeholder_token: str, initializer_token: str | None, num_vectors: int,
    init_vectors: torch.Tensor | None = None,
) -> PlaceholderEmbedding:
    """Add the tokens, start every new row as a copy of the initializer's row (or, given `init_vectors`,
    as those rows: a warm start from an earlier embedding), and splice them in. `num_vectors` is checked
    where the concept's settings declare it (`ConceptSettings`)."""
    check_token(placeholder_token, "concept.placeholder_token", "use one word such as '<my-concept>'")
    tokens = placeholder_tokens(placeholder_token, num_vectors)
    taken = [t for t in tokens if _vocab_has(tokenizer, t)]
    if taken:
        raise TIError(
            f"placeholder token {taken[0]!r} is already in the tokenizer's vocabulary",
            "choose a new word for concept.placeholder_token, such as '<my-concept>'",
        )
    if init_vectors is not None and tuple(init_vectors.shape) != (num_vectors, text_encoder.get_input_embeddings().embedding_dim):
        raise ValueError(f"init_vectors {tuple(init_vectors.shape)} do not fit {num_vectors} rows of this text encoder")
    init_ids = [] if init_vectors is not None else tokenizer.encode(str(initializer_token), add_special_tokens=False)
    if init_vectors is None and len(init_ids) != 1:
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
        start = base.weight[init_ids[0]].clone() if init_vectors is None else init_vectors.to(base.weight)
        base.weight[ids] = start
    module = PlaceholderEmbedding(base, first_id=ids[0], num_vectors=num_vectors)
    if init_vectors is not None:  # the fp32 rows exactly as the file holds them, whatever the matrix dtype
        with torch.no_grad():
            module.vectors.copy_(init_vectors.float())
    text_encoder.set_input_embeddings(module)
    return module


def unsplice(text_encoder) -> None:
    """Put a plain nn.Embedding (with the learned rows) back into the text encoder."""
    module = text_encoder.get_input_embeddings()
    if isinstance(module, PlaceholderEmbedding):
        text_encoder.set_input_embeddings(module.merged())


def save_learned_embeds(path: str | os.PathLike, placeholder_token: str, vectors: torch.Tensor) -> Path:
    """The diffusers layout: one key, the placeholder, a [num_vectors, dim] fp32 tensor."""
    return save_tensors(path, {placeholder_token: vectors})


def save_a1111(path: str | os.PathLike, vectors: torch.Tensor) -> Path:
    """AUTOMATIC1111 / ComfyUI / kohya layout for SD 1.x/2.x: one `emb_params` key; the file name is the token."""
    return save_tensors(path, {"emb_params": vectors})


def save_sdxl(path: str | os.PathLike, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    """The SDXL layout A1111 and ComfyUI read: `clip_l` (first encoder) and `clip_g` (second) in one file."""
    return save_tensors(path, {"clip_l": clip_l, "clip_g": clip_g})


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    out = {}
    for key, vectors in tensors.items():
        tensor = vectors.detach().to("cpu", torch.float32).contiguous()
        if tensor.numel() == 0:
            raise TIError(f"the embedding {key!r} for {path} holds no vectors; nothing was saved",
                          "save an embedding with at least one vector")
        if not torch.isfinite(tensor).all():
            raise TIError(f"the embedding {key!r} for {path} is not finite (NaN or inf); nothing was saved",
                          "lower optimizer.lr or use hardware.mixed_precision=bf16")
        out[key] = tensor
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata={"format": "pt"})
    return path


def load_learned_embeds(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@dataclass
class EmbeddingFile:
    """A concept read from any of the formats people exchange.

    `vectors` holds one [num_vectors, dim] fp32 tensor per text encoder: one for SD 1.x/2.x, two for
    SDXL (first encoder, then the second). `token` is the name the file gives the concept, if any.
    """

    path: Path
    format: str  # diffusers | a1111 | a1111-pt | sdxl | diffusers-sdxl
    token: str | None
    vectors: list[torch.Tensor]
    # the files read, when there are several (SDXL's two diffusers files); else just `path`
    files: list[Path] = field(default_factory=list)

    @property
    def num_vectors(self) -> int:
        return self.vectors[0].shape[0]

    @property
    def widths(self) -> list[int]:
        return [v.shape[1] for v in self.vectors]


FAMILY_BY_WIDTHS = {(768,): "SD 1.x", (1024,): "SD 2.x", (768, 1280): "SDXL"}


def _family(widths) -> str:
    return FAMILY_BY_WIDTHS.get(tuple(widths), f"text encoder width {'/'.join(map(str, widths))}")


def check_fits(embedding: EmbeddingFile, widths: list[int]) -> None:
    """Refuse an embedding made for another model family before it touches a tokenizer."""
    if list(embedding.widths) != list(widths):
        raise TIError(
            f"{embedding.path} is a {_family(embedding.widths)} embedding and does not fit this model "
            f"({_family(widths)})",
            "use an embedding trained for this model family, or choose the matching base model",
        )


def _as_rows(value, path: Path, key: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or not value.is_floating_point():
        raise TIError(f"{path}: {key!r} is not a 1-D or 2-D float tensor", "pass a textual-inversion embedding file")
    tensor = value.detach().to(torch.float32)
    if tensor.numel() == 0:
        raise TIError(f"{path}: {key!r} holds no vectors (shape {tuple(tensor.shape)})",
                      "use another embedding file: this one is empty (a broken export, or a cut copy)")
    if not torch.isfinite(tensor).all():  # a broken file, named here, not blamed later on the learning rate
        raise TIError(f"{path}: {key!r} holds values that are not finite (NaN or inf)",
                      "use another embedding file: this one is broken (a run that diverged, or a cut copy)")
    return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor


def _read_state(path: Path) -> dict:
    if path.suffix not in (".safetensors", *PICKLED_EMBEDDING):
        raise TIError(f"{path} has an unknown extension {path.suffix!r}",
                      "pass a .safetensors, .pt or .bin embedding file, or a folder with learned_embeds.safetensors")
    try:
        # a .pt/.bin is decoded as data (torch_files): nothing in it is unpickled
        state = load_file(str(path)) if path.suffix == ".safetensors" else read_torch_file(path)
        if not isinstance(state, dict):
            raise ValueError("not a dict")
        return state
    except Exception as exc:  # any unreadable file is the same user error
        fix = "pass a .safetensors (or plain-tensor .pt/.bin) textual-inversion embedding"
        if path.suffix != ".safetensors" and path.is_file():
            fix += f"; a .pt you trust converts once with: {convert_command(path)}"
        raise TIError(f"{path} is not a readable embedding file ({type(exc).__name__}: {str(exc)[:120]})",
                      fix) from None


def _from_state(state: dict, path: Path) -> EmbeddingFile:
    if "clip_l" in state and "clip_g" in state:
        return EmbeddingFile(path, "sdxl", None,
                             [_as_rows(state["clip_l"], path, "clip_l"), _as_rows(state["clip_g"], path, "clip_g")])
    if "string_to_param" in state:
        params = state["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise TIError(f"{path}: string_to_param holds {len(params) if isinstance(params, dict) else 'no'} "
                          "terms, not one", "pass a single-concept AUTOMATIC1111 embedding")
        (value,) = params.values()
        name = state.get("name")
        return EmbeddingFile(path, "a1111-pt", name if isinstance(name, str) and name else path.stem,
                             [_as_rows(value, path, "string_to_param")])
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if "emb_params" in tensors or "emp_params" in tensors:  # kohya/A1111, and OneTrainer's spelling
        key = "emb_params" if "emb_params" in tensors else "emp_params"
        return EmbeddingFile(path, "a1111", path.stem, [_as_rows(tensors[key], path, key)])
    if len(tensors) == 1:
        ((token, value),) = tensors.items()
        return EmbeddingFile(path, "diffusers", token, [_as_rows(value, path, token)])
    raise TIError(f"{path} is not a textual-inversion embedding (keys: {', '.join(sorted(map(str, state))[:6])})",
                  "pass a file with one token key (diffusers), emb_params (A1111/ComfyUI) or clip_l+clip_g (SDXL)")


def read_embedding_file(path: Path) -> EmbeddingFile:
    """One embedding file of any format (folders and a run's step files: run_dir.read_embedding)."""
    return _from_state(_read_state(path), path)


def text_encoder_pairs(pipe) -> list[tuple]:
    """(tokenizer, text encoder) of a pipeline, in the order of `EmbeddingFile.vectors`: one per encoder of
    the pipeline's model family (SDXL: two)."""
    from .loading import family_of_pipeline

    return [(getattr(pipe, t), getattr(pipe, e)) for t, e in family_of_pipeline(pipe).component_folders]


def load_into_pipeline(pipe, embedding: EmbeddingFile, token: str | None = None) -> list[str]:
    """Add a concept to a diffusers pipeline under `token` (default: the one the file names).

    Returns the tokens added (`<tok>`, `<tok>_1`, ... for several vectors); a prompt names only the
    first, the pipeline expands it. A token the tokenizer already knows (a word of the model, or another
    embedding loaded before) is refused before anything is added.
    """
    pairs = text_encoder_pairs(pipe)
    check_fits(embedding, [encoder.get_input_embeddings().weight.shape[1] for _, encoder in pairs])
    token = token or embedding.token
    check_token(token, f"the token of {embedding.path}",
                "give it one word of printable characters: PATH=TOKEN on the command line, (path, token) in Python")
    tokens = placeholder_tokens(token, embedding.num_vectors)
    for tokenizer, _ in pairs:
        taken = [t for t in tokens if _vocab_has(tokenizer, t)]
        if taken:
            raise TIError(f"token {taken[0]!r} of {embedding.path} is already in the tokenizer's vocabulary "
                          "(a word of the model, or another embedding loaded before)",
                          "give this embedding another token: PATH=TOKEN on the command line, (path, token) "
                          "in Python")
    for (tokenizer, encoder), vectors in zip(pairs, embedding.vectors):
        rows = vectors.to(encoder.device, encoder.dtype)
        # the rows are written just below: no mean/covariance initialisation of them (diffusers' resize is then a no-op)
        encoder.resize_token_embeddings(len(tokenizer) + rows.shape[0], mean_resizing=False)
        try:
            pipe.load_textual_inversion(rows, token=token, tokenizer=tokenizer, text_encoder=encoder)
        except ValueError as exc:
            raise TIError(f"could not load {embedding.path} as {token!r}: {cause(exc)}",
                          "give this embedding another token, or check the file") from None
    return tokens
