"""`python -m ti_experiments.export SOURCE --format a1111|diffusers`: one concept, in the file other tools read.

diffusers reads `learned_embeds.safetensors` (one key, the token) from a folder; AUTOMATIC1111 and ComfyUI
read one file whose only key is `emb_params` (SD 1.x/2.x) or whose keys are `clip_l` + `clip_g` (SDXL),
and take the prompt word from the FILE NAME. SOURCE is anything `read_embedding` reads: a run directory
(`--step N` picks `learned_embeds-steps-N.safetensors`), an sd-concepts folder, or an embedding file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from .embeddings import EmbeddingFile, read_embedding, save_a1111, save_learned_embeds, save_sdxl
from .errors import TIError, report_or_raise
from .files import write_text_atomic

FORMATS = ("a1111", "diffusers")
# names the diffusers files of a run directory use: an A1111 file must never take one of them
_RESERVED = re.compile(r"^learned_embeds(_2)?(-steps-\d+)?$")


def a1111_name(token: str) -> str:
    """The file stem A1111/ComfyUI turn into the prompt word: `<cat-toy>` -> `cat-toy` (no <, >, spaces)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(token)).strip("-.")
    name = name or "embedding"
    return f"{name}-a1111" if _RESERVED.match(name) else name


def save_for_other_tools(path: str | Path, vectors: list[torch.Tensor]) -> Path:
    """The A1111/ComfyUI file: `emb_params` for one text encoder, `clip_l` + `clip_g` for SDXL's two."""
    if len(vectors) == 1:
        return save_a1111(path, vectors[0])
    if len(vectors) == 2:
        return save_sdxl(path, vectors[0], vectors[1])
    raise TIError(f"an embedding for {len(vectors)} text encoders has no A1111 layout", "export SD or SDXL embeddings")


def save_for_diffusers(folder: str | Path, token: str, vectors: list[torch.Tensor],
                       learnable_property: str | None = None) -> Path:
    """The sd-concepts layout `pipe.load_textual_inversion(folder)` reads (SDXL: a second file for encoder 2)."""
    folder = Path(folder)
    if len(vectors) not in (1, 2):
        raise TIError(f"an embedding for {len(vectors)} text encoders has no diffusers layout",
                      "export SD or SDXL embeddings")
    for i, rows in enumerate(vectors):
        save_learned_embeds(folder / ("learned_embeds.safetensors" if i == 0 else "learned_embeds_2.safetensors"),
                            token, rows)
    write_text_atomic(folder / "token_identifier.txt", token)
    if learnable_property:
        write_text_atomic(folder / "type_of_concept.txt", learnable_property)
    return folder


def _source(path: Path, step: int | None) -> Path:
    """The embedding to read: the run's final one, or with --step the one it saved at that step."""
    if step is None:
        return path
    if not path.is_dir():
        raise TIError(f"--step needs a run directory, and {path} is a file", "pass the run directory, or drop --step")
    found = path / f"learned_embeds-steps-{step}.safetensors"
    if not found.is_file():
        steps = sorted(int(p.stem.rsplit("-", 1)[1]) for p in path.glob("learned_embeds-steps-*.safetensors")
                       if p.stem.rsplit("-", 1)[1].isdigit())
        raise TIError(f"{path} has no embedding saved at step {step}",
                      f"use one of --step {', '.join(map(str, steps))}" if steps else "export the final embedding")
    return found


def export(source: str | Path, fmt: str, out: str | Path | None = None, step: int | None = None,
           token: str | None = None) -> Path:
    """Write the concept at `source` in format `fmt`; return what was written (a file, or a folder for diffusers)."""
    if fmt not in FORMATS:
        raise TIError(f"--format {fmt!r} is unknown", f"use {' or '.join(FORMATS)}")
    source = Path(source).expanduser()
    if not source.exists():
        raise TIError(f"{source} does not exist", "pass a run directory, a concept folder or an embedding file")
    read_from = _source(source, step)
    embedding: EmbeddingFile = read_embedding(read_from)
    token = token or embedding.token or read_from.stem
    stem = a1111_name(token) + (f"-steps-{step}" if step is not None else "")
    home = source if source.is_dir() else source.parent
    concept_type = source / "type_of_concept.txt" if source.is_dir() else None
    prop = concept_type.read_text().strip() if concept_type and concept_type.is_file() else None
    if fmt == "a1111":
        target = Path(out).expanduser() if out else home / f"{stem}.safetensors"
        if target.suffix != ".safetensors":
            raise TIError(f"--out {target} does not end in .safetensors", "name the A1111 file NAME.safetensors")
        if target.resolve() == read_from.resolve():
            raise TIError(f"{target} is the file being read", "choose another --out")
        return save_for_other_tools(target, embedding.vectors)
    target = Path(out).expanduser() if out else home / f"{stem}-diffusers"
    if target.suffix == ".safetensors":  # one file, not the folder layout
        if len(embedding.vectors) != 1:
            raise TIError("an SDXL embedding is two diffusers files", "give --out a folder, not a .safetensors file")
        if target.resolve() == read_from.resolve():
            raise TIError(f"{target} is the file being read", "choose another --out")
        return save_learned_embeds(target, token, embedding.vectors[0])
    if target.exists() and not target.is_dir():
        raise TIError(f"--out {target} is a file", "give a folder (or a NAME.safetensors file) for --format diffusers")
    if target.resolve() == home.resolve() and source.is_dir():
        raise TIError(f"{target} is the folder being read", "choose another --out")
    return save_for_diffusers(target, token, embedding.vectors, prop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ti_experiments.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run directory, a concept folder or an embedding file")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="a1111: one .safetensors for AUTOMATIC1111/ComfyUI (the file name is the prompt word); "
                             "diffusers: a folder for pipe.load_textual_inversion (or one file with --out X.safetensors)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: beside the source)")
    parser.add_argument("--step", type=int, default=None,
                        help="export the embedding a run saved at step N (learned_embeds-steps-N.safetensors)")
    parser.add_argument("--token", default=None, help="the concept's name in the output (default: the source's)")
    args = parser.parse_args(argv)

    try:
        written = export(args.source, args.format, args.out, args.step, args.token)
    except Exception as exc:
        return report_or_raise(exc)
    print(f"written: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
