"""Generate images with learned concepts, from run directories or embedding files of any format.

An embedding goes into the prompt under its token, or into the negative prompt; the base model is the
one the run trained on (or another of the same family).

Each image i uses seed + i, with a CPU generator, so any one picture can be made again alone, on any
device; `NNNN.json` beside it holds everything needed for that (and the command that does it).
`python -m ti_experiments.generate` is the command; `ti_experiments.generate(...)` the same in Python.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import shlex
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..records import run_dir as run_files
from .embeddings import FAMILY_BY_WIDTHS, EmbeddingFile, load_into_pipeline
from ..records.run_dir import read_embedding
from ..errors import ArgumentParser, TIError, report_or_raise
from ..records.files import folder_lock
from ..records.memory import refuse_beyond_memory
from ..config.settings import SEED_MAX

log = logging.getLogger(__name__)

# --scheduler NAME -> the diffusers class, built from the model's own scheduler config
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
DTYPES = ("fp32", "fp16", "bf16")
# A bare embedding file names no model; these are the ones the message suggests, by family.
SUGGESTED_MODELS = {"SD 1.x": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                    "SD 2.x": "stabilityai/stable-diffusion-2-1",
                    "SDXL": "stabilityai/stable-diffusion-xl-base-1.0"}


@dataclass
class Concept:
    """An embedding to add: where it came from, the token it gets, and which prompt it goes into."""

    source: Path
    embedding: EmbeddingFile
    token: str
    negative: bool = False

    def record(self) -> dict:
        """What the image's JSON keeps: enough to find the very same file again."""
        return {"path": str(self.source.resolve()), "token": self.token, "format": self.embedding.format,
                "negative": self.negative, "sha256": embedding_sha256(self.embedding)}


def parse_spec(spec) -> tuple[Path, str | None]:
    """`PATH`, or `PATH=TOKEN` to load it under a token of your choice; in Python also (path, token)."""
    if isinstance(spec, (tuple, list)):
        path, token = spec
        return Path(path).expanduser(), token
    text = str(spec)
    if "=" in text and not Path(text).expanduser().exists():
        path, token = text.rsplit("=", 1)
        if token and "/" not in token and os.sep not in token:
            return Path(path).expanduser(), token
    return Path(text).expanduser(), None


def read_concepts(specs, negative: bool) -> list[Concept]:
    concepts = []
    for spec in specs:
        path, token = parse_spec(spec)
        embedding = read_embedding(path)
        concepts.append(Concept(path, embedding, token or embedding.token or path.stem, negative))
    return concepts


def embedding_sha256(embedding: EmbeddingFile) -> str:
    """sha256 of the file read (for a run directory: the `learned_embeds_sha256` of its summary.json);
    the two-file SDXL layout hashes both files, one after the other."""
    files = embedding.files or [embedding.path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


@dataclass
class BaseModel:
    """The pipeline to load: a local folder or Hub id, and the native size of what was trained."""

    source: str
    revision: str | None = None
    variant: str | None = None
    resolution: int | None = None


def _run_config(folder: Path):
    """The resolved config a run directory keeps, or None for anything that is not a run."""
    return run_files.read_config(folder, composed=False) if folder.is_dir() else None


def _from_model_node(node, resolution=None, where: str = "") -> BaseModel:
    if node.get("random_init"):
        raise TIError(f"{where} trained on a model with random weights (model.random_init=true), which is not "
                      "kept anywhere", "pass --model with the model to generate with")
    from .loading import ensure_offline_model

    source = str(node.pretrained_model_name_or_path)
    ensure_offline_model(source)  # the offline tiny models are rebuilt, bit-identically, where the record says
    return BaseModel(source, node.get("revision"), node.get("variant"),
                     int(resolution or node.get("resolution") or 0) or None)


def base_model(model: str | None, concepts: list[Concept]) -> BaseModel:
    """--model (a folder, a Hub id, or an option of conf/model such as `sd15` or `tiny`), else the model
    of the first run directory given."""
    from ..config import compose, options

    if model:
        if not Path(model).expanduser().exists() and model in options("model"):
            return _from_model_node(compose([f"model={model}"]).model, where=f"model={model}")
        return BaseModel(str(model))
    for concept in concepts:
        cfg = _run_config(concept.source)
        if cfg is not None:
            return _from_model_node(cfg.model, cfg.get("data", {}).get("resolution"), where=str(concept.source))
    if not concepts:
        raise TIError("no base model: neither --model nor a run directory was given",
                      "pass --model (a diffusers folder or Hub id), or a run directory first")
    family = FAMILY_BY_WIDTHS.get(tuple(concepts[0].embedding.widths), "")
    example = SUGGESTED_MODELS.get(family, "PATH_OR_HUB_ID")
    raise TIError(f"{concepts[0].source} is a bare {family or 'custom-model'} embedding, which does not say which "
                  "model it was trained on", f"pass --model, e.g. --model {example}")


def pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def pick_dtype(dtype: str | None, device: str):
    """fp16 on a GPU, fp32 on a CPU, unless asked otherwise."""
    import torch

    name = dtype or ("fp32" if device.startswith("cpu") else "fp16")
    if name not in DTYPES:
        raise TIError(f"dtype {name!r} is unknown", f"use one of {', '.join(DTYPES)}")
    if name == "fp16" and device.startswith("cpu"):
        raise TIError("fp16 generation needs a GPU and the device is the CPU", "use --dtype fp32 (or bf16)")
    return name, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


@dataclass
class Settings:
    """Everything that decides the pixels, besides the prompt, the seed and the embeddings."""

    model: str
    steps: int = 50
    guidance: float = 7.5
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    revision: str | None = None
    variant: str | None = None
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.steps < 1:
            raise TIError(f"steps={self.steps} must be >= 1", "use e.g. --steps 30")
        if not math.isfinite(self.guidance):
            raise TIError(f"guidance={self.guidance} is not a finite number", "use e.g. --guidance 7.5")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise TIError(f"{name}={value} is not a positive multiple of 8", f"use e.g. --{name} 512")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise TIError(f"scheduler {self.scheduler!r} is unknown", f"use one of {', '.join(SCHEDULERS)}")
        if self.width and self.height:  # the decoded image as floats alone (the VAE needs more)
            refuse_beyond_memory(self.width * self.height * 3 * 4, f"a {self.width}x{self.height} image",
                                 "use the model's resolution, e.g. --width 512 --height 512")


def check_seed(seed, num_images: int) -> None:
    """Image i uses seed + i: every one of them must be a seed (0 to SEED_MAX), as in training."""
    if seed is None:
        return
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX - (num_images - 1):
        last = f" (image i uses seed + i, up to seed + {num_images - 1})" if num_images > 1 else ""
        raise TIError(f"seed={seed!r} is not an integer between 0 and {SEED_MAX - (num_images - 1)}{last}",
                      "use e.g. --seed 0")


def set_scheduler(pipe, name: str | None) -> None:
    if name is None:
        return
    import diffusers

    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def negative_text(negative_prompt: str | None, concepts: list[Concept]) -> str | None:
    """The user's negative prompt followed by the tokens of the negative embeddings."""
    parts = [negative_prompt] if negative_prompt else []
    parts += [c.token for c in concepts if c.negative]
    return ", ".join(parts) or None


def generate(prompt: str, embeddings=(), *, negative_prompt: str | None = None, negative_embeddings=(),
             model: str | None = None, num_images: int = 1, steps: int = 50, guidance: float = 7.5,
             width: int | None = None, height: int | None = None, seed: int | None = None,
             scheduler: str | None = None, device: str | None = None, dtype: str | None = None,
             out: str | os.PathLike | None = None, progress: bool | None = None) -> list:
    """Images (PIL) of `prompt` with the given concepts loaded, each under its own token.

    embeddings / negative_embeddings: run directories, embedding files (diffusers, A1111/ComfyUI, SDXL) or
    sd-concepts folders; `PATH=TOKEN` or (path, token) loads one under another token. Negative ones go into
    the negative prompt. model: a folder, Hub id or conf/model option (default: the model of the first run
    directory). seed: image i uses seed + i (default: a random seed, recorded). out: also write
    NNNN.png + NNNN.json there. Each image's record is also in `image.info["ti_experiments"]`.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise TIError("the prompt is empty", 'pass a prompt such as "a photo of a <cat-toy>"')
    if isinstance(embeddings, (str, os.PathLike)):
        embeddings = [embeddings]
    if isinstance(negative_embeddings, (str, os.PathLike)):
        negative_embeddings = [negative_embeddings]
    if not isinstance(num_images, int) or num_images < 1:
        raise TIError(f"num_images={num_images!r} must be an integer >= 1", "use e.g. --num-images 4")
    check_seed(seed, num_images)
    concepts = read_concepts(embeddings, negative=False) + read_concepts(negative_embeddings, negative=True)
    base = base_model(model, concepts)
    device = pick_device(device)
    dtype_name, torch_dtype = pick_dtype(dtype, device)
    settings = Settings(model=base.source, steps=int(steps), guidance=float(guidance),
                        width=width or base.resolution, height=height or base.resolution, scheduler=scheduler,
                        dtype=dtype_name, device=device, revision=base.revision, variant=base.variant)
    settings.check()
    negative = negative_text(negative_prompt, concepts)
    if negative and settings.guidance <= 1:
        raise TIError(f"a negative prompt or embedding has no effect at guidance {settings.guidance} (<= 1)",
                      "use a guidance above 1, e.g. --guidance 7.5")
    for concept in concepts:
        if not concept.negative and concept.token not in prompt:
            log.warning("the prompt does not use %s (from %s): that concept will not show", concept.token,
                        concept.source)

    out_dir = Path(out).expanduser() if out is not None else None
    # the folder is this command's while it writes; numbering goes on after what is there
    with folder_lock(out_dir, "a generate command", "wait for it to end, or pass another --out (out= in Python)") \
            if out_dir is not None else nullcontext():
        return _generate(prompt, (negative_prompt, negative), concepts, base, settings, torch_dtype,
                         seed, num_images, out_dir, progress)


def _generate(prompt, negatives: tuple, concepts, base, settings: Settings, torch_dtype, seed, num_images, out_dir,
              progress) -> list:
    """The pipeline with the concepts loaded, then one image per seed. negatives: (the user's negative
    prompt, the negative prompt used)."""
    import torch
    from tqdm.auto import tqdm

    from .loading import load_pipeline

    pipe = load_pipeline(base.source, base.revision, base.variant, torch_dtype)
    for concept in concepts:
        load_into_pipeline(pipe, concept.embedding, concept.token)
    set_scheduler(pipe, settings.scheduler)
    pipe.to(settings.device)
    pipe.set_progress_bar_config(disable=True)
    settings.extra = {"pipeline": type(pipe).__name__, "scheduler_class": type(pipe.scheduler).__name__,
                      "versions": _versions()}
    first_seed = secrets.randbelow(2**31) if seed is None else int(seed)
    index = next_index(out_dir) if out_dir is not None else 0
    negative_prompt, negative = negatives
    images = []
    bar = tqdm(total=num_images, desc="images", disable=not progress if progress is not None else None)
    try:
        for i in range(num_images):
            image_seed = first_seed + i
            generator = torch.Generator("cpu").manual_seed(image_seed)
            image = pipe(prompt, negative_prompt=negative, num_inference_steps=settings.steps,
                         guidance_scale=settings.guidance, width=settings.width, height=settings.height,
                         generator=generator).images[0]
            record = image_record(prompt, negative_prompt, negative, image_seed, settings, concepts, image.size)
            image.info["ti_experiments"] = json.dumps(record)
            if out_dir is not None:
                write_image(out_dir, index + i, image, record)
            images.append(image)
            bar.update(1)
    finally:
        bar.close()
    return images


def image_record(prompt, negative_prompt, negative, seed, settings: Settings, concepts, size) -> dict:
    s = {k: v for k, v in vars(settings).items() if k != "extra"}
    s.update(width=size[0], height=size[1], **settings.extra)
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "negative_prompt_used": negative,
        "seed": seed,
        "settings": s,
        "embeddings": [c.record() for c in concepts],
        "command": remake_command(prompt, negative_prompt, seed, settings, concepts, size),
        "created": datetime.now().isoformat(timespec="seconds"),
    }


def remake_command(prompt, negative_prompt, seed, settings: Settings, concepts, size) -> str:
    """The command that makes this one image again."""
    args = ["python", "-m", "ti_experiments.generate"]
    args += [f"{c.source.resolve()}={c.token}" for c in concepts if not c.negative]
    args.append(prompt)
    for c in concepts:
        if c.negative:
            args += ["--negative-embedding", f"{c.source.resolve()}={c.token}"]
    if negative_prompt:
        args += ["--negative-prompt", negative_prompt]
    args += ["--model", settings.model, "--seed", str(seed), "--num-images", "1", "--steps", str(settings.steps),
             "--guidance", str(settings.guidance), "--width", str(size[0]), "--height", str(size[1]),
             "--dtype", settings.dtype]
    if settings.scheduler:
        args += ["--scheduler", settings.scheduler]
    return shlex.join(args)


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "diffusers", "transformers")}


def next_index(out_dir: Path) -> int:
    """Images already in the folder are kept: numbering goes on after the last image or record."""
    taken = [int(p.stem) for p in out_dir.iterdir()
             if p.stem.isdigit() and p.suffix in (".png", ".json")] if out_dir.is_dir() else []
    return max(taken, default=-1) + 1


def write_image(out_dir: Path, index: int, image, record: dict) -> None:
    """NNNN.png (the record also in a PNG text chunk) and NNNN.json, each written atomically."""
    from PIL.PngImagePlugin import PngInfo

    from ..records.files import atomic_path, write_text_atomic

    info = PngInfo()
    info.add_text("ti_experiments", json.dumps(record))
    with atomic_path(out_dir / f"{index:04d}.png") as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    write_text_atomic(out_dir / f"{index:04d}.json", json.dumps(record, indent=2) + "\n")


def default_out(specs) -> Path:
    """RUN_DIR/generated/<time> for the first run directory given, else ./generated/<time>."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    runs = [path for path, _ in map(parse_spec, specs) if _run_config(path) is not None]
    return (runs[0] / run_files.GENERATED if runs else Path(run_files.GENERATED)) / stamp


EXAMPLES = """examples:
  python -m ti_experiments.generate outputs/runs/DATE/TIME "A <cat-toy> train" --num-images 4 --seed 0
  python -m ti_experiments.generate outputs/runs/A outputs/runs/B "a <cat-toy> in the style of <my-style>"
  python -m ti_experiments.generate outputs/runs/DATE/TIME "a <cat-toy> on a beach" \\
      --negative-embedding bad-hands.safetensors --negative-prompt "blurry"
  python -m ti_experiments.generate 'my-embedding.pt=<mine>' "a photo of <mine>" --model sd15
"""


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = ArgumentParser(
        prog="python -m ti_experiments.generate", description=__doc__.splitlines()[0],
        usage="%(prog)s [EMBEDDING ...] PROMPT [options]",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", metavar="EMBEDDING ... PROMPT",
                        help="run directories, embedding files or concept folders (PATH=TOKEN renames one), "
                             "then the prompt")
    parser.add_argument("--embedding", action="append", default=[], metavar="PATH",
                        help="one more embedding (repeatable)")
    parser.add_argument("--negative-embedding", action="append", default=[], metavar="PATH",
                        help="an embedding used in the negative prompt, e.g. a 'bad-hands' one (repeatable)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50, help="inference steps (default 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    parser.add_argument("--width", type=int, default=None, help="default: the resolution the run trained at")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="image i uses seed + i (default: random, recorded)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None, help="default: the model's")
    parser.add_argument("--model", default=None,
                        help="base model: folder, Hub id or conf/model option (default: the run's own)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: RUN_DIR/generated/<time>, or ./generated/<time> for bare files")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on a GPU, fp32 on a CPU")
    args = parser.parse_args(argv)
    *positional, prompt = args.items

    try:
        if positional and Path(prompt).expanduser().exists():
            raise TIError(f"the last argument {prompt!r} is a path, not a prompt",
                          'put the prompt last: EMBEDDING ... "a photo of a <token>"')
        specs = positional + args.embedding
        out = args.out or default_out(specs)
        images = generate(prompt, specs, negative_prompt=args.negative_prompt,
                          negative_embeddings=args.negative_embedding, model=args.model,
                          num_images=args.num_images, steps=args.steps, guidance=args.guidance, width=args.width,
                          height=args.height, seed=args.seed, scheduler=args.scheduler, device=args.device,
                          dtype=args.dtype, out=out)
    except Exception as exc:
        return report_or_raise(exc)
    print(f"{len(images)} image(s) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
