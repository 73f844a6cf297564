"""`python -m ti_experiments.export SOURCE --format a1111|diffusers`: one concept, in the file other tools read.

diffusers reads `learned_embeds.safetensors` (one key, the token) from a folder; AUTOMATIC1111 and ComfyUI
read one file whose only key is `emb_params` (SD 1.x/2.x) or whose keys are `clip_l` + `clip_g` (SDXL),
and take the prompt word from the FILE NAME. SOURCE is anything `read_embedding` reads: a run directory
(`--step N` picks `learned_embeds-steps-N.safetensors`, with SDXL's `learned_embeds_2-steps-N.safetensors`), an sd-concepts folder, or an embedding file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .records import run_dir as run_files
from .models.embeddings import save_learned_embeds
from .errors import ArgumentParser, TIError, report_or_raise

FORMATS = ("a1111", "diffusers")


def export(source: str | Path, fmt: str, out: str | Path | None = None, step: int | None = None,
           token: str | None = None) -> Path:
    """Write the concept at `source` in format `fmt`; return what was written (a file, or a folder for diffusers)."""
    if fmt not in FORMATS:
        raise TIError(f"--format {fmt!r} is unknown", f"use {' or '.join(FORMATS)}")
    source = Path(source).expanduser()
    if not source.exists():
        raise TIError(f"{source} does not exist", "pass a run directory, a concept folder or an embedding file")
    embedding = run_files.read_embedding(source, step)
    read_from = source if step is None else embedding.path  # the step's (first) file
    token = token or embedding.token or read_from.stem
    stem = run_files.a1111_name(token) + (f"-steps-{step}" if step is not None else "")
    home = source if source.is_dir() else source.parent
    prop = run_files.read_concept_type(source) if source.is_dir() else None
    if fmt == "a1111":
        target = Path(out).expanduser() if out else home / f"{stem}.safetensors"
        if target.suffix != ".safetensors":
            raise TIError(f"--out {target} does not end in .safetensors", "name the A1111 file NAME.safetensors")
        if target.resolve() == read_from.resolve():
            raise TIError(f"{target} is the file being read", "choose another --out")
        if _already_there(target, None, embedding.vectors):
            return target
        return run_files.save_for_other_tools(target, embedding.vectors)
    target = Path(out).expanduser() if out else home / f"{stem}-diffusers"
    if target.suffix == ".safetensors":  # one file, not the folder layout
        if len(embedding.vectors) != 1:
            raise TIError("an SDXL embedding is two diffusers files", "give --out a folder, not a .safetensors file")
        if target.resolve() == read_from.resolve():
            raise TIError(f"{target} is the file being read", "choose another --out")
        if _already_there(target, token, embedding.vectors):
            return target
        return save_learned_embeds(target, token, embedding.vectors[0])
    if target.exists() and not target.is_dir():
        raise TIError(f"--out {target} is a file", "give a folder (or a NAME.safetensors file) for --format diffusers")
    if target.resolve() == home.resolve() and source.is_dir():
        raise TIError(f"{target} is the folder being read", "choose another --out")
    if _already_there(target, token, embedding.vectors):
        return target
    return run_files.write_concept(target, token, embedding.vectors, prop)


def _already_there(target: Path, token: str | None, vectors: list) -> bool:
    """True when `target` already holds this concept (the export is done); an export never replaces a file
    or concept folder that holds something else."""
    import torch

    if not target.exists() or (target.is_dir() and not run_files.holds_concept(target)):
        return False
    try:
        there = run_files.read_embedding(target)
    except TIError:
        there = None
    same = there is not None and (token is None or there.token == token) and len(there.vectors) == len(vectors) \
        and all(torch.equal(a, b) for a, b in zip(there.vectors, vectors))
    if not same:
        raise TIError(f"--out {target} already holds another embedding", f"choose another --out, or remove {target} first")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m ti_experiments.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run directory, a concept folder or an embedding file")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="a1111: one .safetensors for AUTOMATIC1111/ComfyUI (the file name is the prompt word); "
                             "diffusers: a folder for pipe.load_textual_inversion (or one file with --out X.safetensors)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: beside the source)")
    parser.add_argument("--step", type=int, default=None,
                        help="export the embedding a run saved at step N (learned_embeds-steps-N.safetensors; "
                             "SDXL: with learned_embeds_2-steps-N.safetensors)")
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
