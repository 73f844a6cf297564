"""The run directory: the name of every file a run writes, and the one way to read and write each.

A run directory is the record of a run, and other tools read it as a concept folder:

    .hydra/config.yaml            the composed config, interpolations kept (reproduce, evaluate)
    .hydra/overrides.yaml         the command line's overrides
    resolved_config.yaml          the same config, resolved (report, publish, generate)
    run.json                      status, command, versions, hardware; true whatever happens
    metrics.jsonl                 one line per optimizer step
    summary.json                  final loss, speed, memory, evaluation
    evaluation.json               `python -m ti_experiments.evaluate`'s scores per saved embedding
    learned_embeds.safetensors    the concept (diffusers): the kept step (training/stopping.py); SDXL adds
                                  learned_embeds_2.safetensors
    token_identifier.txt, type_of_concept.txt   the sd-concepts layout's text files
    <token>.safetensors           the same concept for AUTOMATIC1111/ComfyUI
    learned_embeds-steps-N.safetensors   saved every train.save_steps (SDXL: + learned_embeds_2-steps-N)
    checkpoint-N/                 state to resume from (with the stopping rule's: stopping.json, stopping_kept.safetensors)
    validation/step-N/PP-II.png   validation images
    model_card.md, ti.log, generated/, tensorboard/
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.embeddings import EmbeddingFile, read_embedding_file, save_learned_embeds, save_tensors
from ..errors import TIError
from .files import LOCK_FILE, atomic_path, folder_held, folder_lock, open_no_follow, refuse_link, write_text_atomic

HYDRA_DIR = ".hydra"
COMPOSED_CONFIG = f"{HYDRA_DIR}/config.yaml"
OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
HYDRA_SETTINGS = f"{HYDRA_DIR}/hydra.yaml"
RESOLVED_CONFIG = "resolved_config.yaml"
RECORD = "run.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVALUATION = "evaluation.json"
LOG = "ti.log"
CARD = "model_card.md"
EMBEDDINGS = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")  # one per text encoder
EMBEDDING = EMBEDDINGS[0]
LEGACY_EMBEDDING = "learned_embeds.bin"  # sd-concepts-library folders made before safetensors
TOKEN = "token_identifier.txt"
CONCEPT_TYPE = "type_of_concept.txt"
VALIDATION = "validation"
VALIDATION_GRID = "validation/grid.png"  # rows: prompts, columns: steps
GENERATED = "generated"
TENSORBOARD = "tensorboard"
CHECKPOINT_STATE = "trainer_state.json"  # written last: a checkpoint without it is incomplete
STOPPING_STATE = "stopping.json"  # in a checkpoint: the stopping rule's state
STOPPING_KEPT = "stopping_kept.safetensors"  # in a checkpoint: the kept step's rows, one key per text encoder
WANDB_ID = "wandb_run_id.txt"  # the W&B run a resumed run continues

_STEP_FILE = re.compile(r"^learned_embeds(?:_(\d+))?-steps-(\d+)\.safetensors$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_VALIDATION_STEP = re.compile(r"^step-(\d+)$")
# names the diffusers files of a run directory use: an A1111 file must never take one of them
_RESERVED = re.compile(r"^learned_embeds(_2)?(-steps-\d+)?$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# --- JSON records -----------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    """A JSON record, or {} when it is missing or unreadable (a run killed before writing it)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_summary(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / SUMMARY)


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(Path(run_dir) / SUMMARY, summary)


def read_record(run_dir: Path) -> dict:
    """run.json; a record that still says "running" while no process holds the folder is of a run that
    ended without writing how (killed with -9, or its disk was full): it reads as failed."""
    record = read_json(Path(run_dir) / RECORD)
    if record.get("status") == "running" and not folder_held(run_dir):
        record["status"] = "failed"
        record["error"] = record.get("error") or {
            "type": "unrecorded", "message": "the run ended without recording how (killed, or its disk was full)"}
    return record


def is_run(path: Path) -> bool:
    """A run directory (it has a run record or a resolved config), not a bare concept folder."""
    path = Path(path)
    return path.is_dir() and ((path / RESOLVED_CONFIG).is_file() or (path / RECORD).is_file())


def holds_run(path: Path) -> bool:
    """Anything a run leaves (even one killed early): a new run here would overwrite or mix with it."""
    path = Path(path)
    marks = (RECORD, RESOLVED_CONFIG, COMPOSED_CONFIG, METRICS, SUMMARY)  # an embedding alone: a concept folder
    return path.is_dir() and (any((path / m).exists() for m in marks) or bool(saved_steps(path))
                              or any(checkpoint_step(p) >= 0 for p in path.glob("checkpoint-*")))


def resumes(run_dir: Path, resume_from: str | None) -> bool:
    """Whether `train.resume_from_checkpoint` continues a run of this folder (a checkpoint in it)."""
    if not resume_from:
        return False
    if str(resume_from) == "latest":
        return bool(list_checkpoints(run_dir))
    target = Path(str(resume_from)).expanduser().resolve()
    return target == Path(run_dir).resolve() or target.parent == Path(run_dir).resolve()


@contextlib.contextmanager
def claim(run_dir: Path, resume_from: str | None = None, own: bool = False) -> Iterator[Path]:
    """The folder for one run, held for the run's lifetime: refused while another process runs in it, and
    when it holds another run that this one does not resume (`own`: the run there is this one, e.g. a
    SLURM job run again after a requeue). The lock comes first, so two runs started at once cannot both
    find the folder empty."""
    run_dir = Path(run_dir)
    with folder_lock(run_dir, "a run", "wait for it to end, or start this run in a new folder "
                     "(another hydra.run.dir, or none for a fresh timestamped one)"):
        own = own or resumes(run_dir, resume_from)
        if holds_run(run_dir) and not own:
            status = read_record(run_dir).get("status") or "unknown status"
            fix = ("start in a new folder (another hydra.run.dir, or none for a fresh timestamped one), "
                   "or continue that run with train.resume_from_checkpoint=latest" if list_checkpoints(run_dir)
                   else "start in a new folder (another hydra.run.dir, or none for a fresh timestamped one); "
                   "that run has no checkpoint to resume")
            raise TIError(f"{run_dir} already holds a run ({RECORD}: {status}); a new run there would overwrite it",
                          fix)
        for entry in sorted(run_dir.iterdir()):  # even a run's own folder: no file of it may be a link
            refuse_link(entry)
        if not own:
            _refuse_others(run_dir)
        yield run_dir


# what a folder holds before the run that is starting holds it: its lock, and the log Hydra opened
_BEFORE_THE_RUN = (LOCK_FILE, LOG)
_CONCEPT_FILES = (*EMBEDDINGS, LEGACY_EMBEDDING, TOKEN, CONCEPT_TYPE)


def _refuse_others(run_dir: Path) -> None:
    """A new run's folder holds nothing but what the run writes: a folder of the user's own files (an
    embedding, an sd-concepts concept, anything) is never written into, so nothing in it is replaced or
    hidden by the run's files."""
    others = [p.name for p in sorted(run_dir.iterdir()) if p.name not in _BEFORE_THE_RUN]
    if not others:
        return
    concept = [n for n in others if n in _CONCEPT_FILES or n.endswith((".safetensors", ".pt", ".bin"))]
    shown = ", ".join((concept or others)[:3]) + (", ..." if len(concept or others) > 3 else "")
    what = f"an embedding or concept ({shown})" if concept else f"files this run did not write ({shown})"
    raise TIError(f"{run_dir} holds {what}; a run writes only into a new or empty folder, so nothing of yours "
                  "is replaced", "start the run in a new folder (another hydra.run.dir, or none for a fresh "
                  "timestamped one)")


def check_run_folder(given) -> Path:
    """The run's folder as given (paths.output_dir, from hydra.run.dir): not empty (the current directory,
    with everything in it), and not inside the package (a run folder in conf/ becomes a config option)."""
    from ..config import CONF_DIR, SWEEPS_DIR

    if given is None or not str(given).strip():
        raise TIError("the run's folder (hydra.run.dir, paths.output_dir) is empty, so the run would write into "
                      "the current directory", "name a new folder, e.g. hydra.run.dir=outputs/runs/my-run, or leave "
                      "hydra.run.dir out for a fresh timestamped one")
    run_dir = Path(str(given)).expanduser()
    where = run_dir.resolve()
    for inside in (Path(__file__).resolve().parent.parent, CONF_DIR.resolve(), SWEEPS_DIR.resolve()):
        if where == inside or inside in where.parents:
            raise TIError(f"the run's folder {run_dir} is inside the package ({inside}), whose files it would "
                          "mix with", "name a folder outside it, e.g. hydra.run.dir=outputs/runs/my-run")
    return run_dir


# --- metrics.jsonl ----------------------------------------------------------------------------------------


def append_metrics(run_dir: Path, row: dict) -> None:
    """One write() of the whole line to an O_APPEND file: a process killed at any moment leaves whole
    lines (only a full disk can cut one short, and readers skip a cut line)."""
    path = Path(run_dir) / METRICS
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = (json.dumps(row) + "\n").encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except OSError as exc:
        raise exc if exc.filename else OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        os.close(fd)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl by step. A line cut short by a crash is skipped; a step logged again by a
    run resumed from an earlier checkpoint replaces the first record of it."""
    path = Path(run_dir) / METRICS
    rows: dict = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row.get("step")] = row
    return sorted(rows.values(), key=lambda r: r.get("step") or 0)


# --- configs ----------------------------------------------------------------------------------------------


def write_configs(run_dir: Path, cfg, overrides: list[str] | None = None, composed: bool = False) -> None:
    """resolved_config.yaml; with `composed`, what Hydra writes in `.hydra/` instead (the config with its
    interpolations, the overrides, and Hydra's own settings when Hydra composed the run). A run writes these
    itself, once the folder is its own (`hydra.output_subdir` is null)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    if composed:
        write_text_atomic(run_dir / COMPOSED_CONFIG, OmegaConf.to_yaml(cfg))
        write_text_atomic(run_dir / OVERRIDES, OmegaConf.to_yaml(OmegaConf.create(list(overrides or []))))
        if HydraConfig.initialized():
            write_text_atomic(run_dir / HYDRA_SETTINGS, OmegaConf.to_yaml({"hydra": HydraConfig.get()}))
    else:
        write_text_atomic(run_dir / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def read_config(run_dir: Path, composed: bool = True):
    """The run's config as a DictConfig: the composed one (interpolations kept, e.g. the cache as it is
    today) when there is one and `composed`, else the resolved one; None for a folder that is no run.

    A run folder may come from anyone: the config is data. It builds only the project's own targets
    (`config.check_targets`), and a broken file is one line naming it."""
    from ..config import load_yaml_config

    run_dir = Path(run_dir)
    names = (COMPOSED_CONFIG, RESOLVED_CONFIG) if composed else (RESOLVED_CONFIG,)
    path = next((run_dir / n for n in names if (run_dir / n).is_file()), None)
    return load_yaml_config(path, "run config") if path is not None else None


def read_overrides(run_dir: Path) -> list[str]:
    """The overrides a run was started with: Hydra's file, else the run record's."""
    import yaml

    path = Path(run_dir) / OVERRIDES
    if path.is_file():
        try:
            given = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise TIError(f"{path} is not a readable list of overrides ({type(exc).__name__})",
                          "restore the file from a copy of the run, or delete it (run.json keeps them too)") from None
        if not isinstance(given, list):
            raise TIError(f"{path} is not a list of overrides", "restore the file from a copy of the run, or delete it")
        return [str(o) for o in given]
    return [str(o) for o in read_record(run_dir).get("overrides") or []]


def initializer_word(run_dir: Path, config) -> str | None:
    """The word a run's rows started from: the one chosen among concept.initializer_token's candidates
    (run.json), else the one word the config names (None: a list or `auto` the run never chose from)."""
    chosen = (read_record(run_dir).get("initializer") or {}).get("chosen")
    if chosen:
        return str(chosen)
    named = (config.get("concept") or {}).get("initializer_token")
    return named if isinstance(named, str) and named != "auto" else None


def choice(run_dir: Path, group: str) -> str | None:
    """The option a run chose for a config group (`model` -> `tiny`): its run.json, else its overrides."""
    chosen = (read_record(run_dir).get("choices") or {}).get(group)
    if chosen:
        return str(chosen)
    given = [o.split("=", 1)[1] for o in read_overrides(run_dir) if o.lstrip("+~").startswith(f"{group}=")]
    return given[-1] if given else None


@dataclass
class Run:
    """What a finished (or failed) run left: its resolved config (a plain dict), run.json, summary.json and
    metrics; what the report compares and what publishing describes."""

    dir: Path
    config: dict
    record: dict
    summary: dict
    metrics: list[dict]


def load_run(run_dir: Path) -> Run:
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    config = read_config(run_dir, composed=False)
    return Run(dir=run_dir, config=OmegaConf.to_container(config, resolve=False) if config is not None else {},
               record=read_record(run_dir), summary=read_summary(run_dir), metrics=read_metrics(run_dir))


def load_finished_run(run_dir: Path) -> Run:
    """A completed run with its embedding (a publishable one), or a one-line error saying why not."""
    run_dir = Path(run_dir)
    if not (run_dir / RESOLVED_CONFIG).is_file() or not (run_dir / EMBEDDING).is_file():
        raise TIError(f"{run_dir} is not a finished run (no {RESOLVED_CONFIG} or {EMBEDDING})",
                      "pass the directory of a completed run")
    run = load_run(run_dir)
    status = run.record.get("status")
    if status not in (None, "completed"):
        raise TIError(f"{run_dir} did not complete ({RECORD} says {status!r})",
                      f"publish a completed run, or resume this one first (hydra.run.dir={run_dir} "
                      "train.resume_from_checkpoint=latest)" if list_checkpoints(run_dir)
                      else "publish a completed run (this one saved no checkpoint to resume)")
    return run


# --- the concept: sd-concepts layout, A1111 file, step files ----------------------------------------------


def a1111_name(token: str) -> str:
    """The file stem A1111/ComfyUI turn into the prompt word: `<cat-toy>` -> `cat-toy` (no <, >, spaces)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(token)).strip("-.")
    name = name or "embedding"
    return f"{name}-a1111" if _RESERVED.match(name) else name


def save_for_other_tools(path: str | Path, vectors: list[torch.Tensor]) -> Path:
    """The A1111/ComfyUI file, in the layout of the model family with as many text encoders
    (`emb_params` for SD 1.x/2.x, `clip_l` + `clip_g` for SDXL)."""
    from ..models.loading import family_for_encoders

    return save_tensors(path, family_for_encoders(len(vectors)).a1111_tensors(vectors))


def write_concept(folder: str | Path, token: str, vectors: list[torch.Tensor], learnable_property: str | None = None,
                  other_tools: bool = False) -> Path:
    """The sd-concepts-library layout (diffusers and InvokeAI read it): learned_embeds.safetensors (SDXL: and
    learned_embeds_2.safetensors, the second encoder's rows), token_identifier.txt, type_of_concept.txt;
    with `other_tools` also the AUTOMATIC1111/ComfyUI file named after the token (`<cat-toy>` ->
    `cat-toy.safetensors`)."""
    folder = Path(folder)
    if len(vectors) not in (1, 2):
        raise TIError(f"an embedding for {len(vectors)} text encoders has no diffusers layout",
                      "export SD or SDXL embeddings")
    for name, rows in zip(EMBEDDINGS, vectors):
        save_learned_embeds(folder / name, token, rows)
    write_text_atomic(folder / TOKEN, token)
    if learnable_property:
        write_text_atomic(folder / CONCEPT_TYPE, learnable_property)
    if other_tools:
        save_for_other_tools(folder / f"{a1111_name(token)}.safetensors", vectors)
    return folder


def holds_concept(folder: Path) -> bool:
    """A folder with a concept's files in it (what an export into it would replace)."""
    return any((Path(folder) / name).exists() for name in (*EMBEDDINGS, LEGACY_EMBEDDING, TOKEN))


def read_token(folder: Path) -> str | None:
    path = Path(folder) / TOKEN
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def read_concept_type(folder: Path) -> str | None:
    path = Path(folder) / CONCEPT_TYPE
    return path.read_text().strip() if path.is_file() else None


def step_file(run_dir: Path, step: int, encoder: int = 0) -> Path:
    """learned_embeds-steps-N.safetensors, and for SDXL's second encoder learned_embeds_2-steps-N.safetensors
    (the names diffusers' SDXL example gives them)."""
    suffix = "" if encoder == 0 else f"_{encoder + 1}"
    return Path(run_dir) / f"learned_embeds{suffix}-steps-{step}.safetensors"


def write_step_embedding(run_dir: Path, step: int, token: str, vectors: list[torch.Tensor]) -> None:
    for encoder, rows in enumerate(vectors):
        save_learned_embeds(step_file(run_dir, step, encoder), token, rows)


def saved_steps(run_dir: Path) -> list[int]:
    """The steps whose embedding the run saved (the first encoder's file decides), in order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(int(m.group(2)) for p in run_dir.iterdir()
                  if (m := _STEP_FILE.match(p.name)) and m.group(1) is None)


def step_files(run_dir: Path, step: int) -> list[Path]:
    """The files of one saved step, first encoder first (SDXL: both), or a one-line error naming the steps
    there are."""
    run_dir = Path(run_dir)
    first = step_file(run_dir, step)
    if not first.is_file():
        steps = saved_steps(run_dir)
        raise TIError(f"{run_dir} has no embedding saved at step {step}",
                      f"use one of --step {', '.join(map(str, steps))}" if steps else "export the final embedding")
    second = step_file(run_dir, step, 1)
    return [first, second] if second.is_file() else [first]


def read_embedding(path: str | os.PathLike, step: int | None = None) -> EmbeddingFile:
    """Any embedding people exchange: a file in the diffusers, A1111/ComfyUI (`emb_params`, `.pt` with
    `string_to_param`) or SDXL (`clip_l`/`clip_g`) format, or a folder in the sd-concepts layout (a run
    directory included; `learned_embeds_2.safetensors` beside it makes it the SDXL two-file layout).
    `step`: the embedding a run directory saved at that step (SDXL: both encoders' step files).
    Never executes code: safetensors, or a .pt/.bin decoded as data (models/torch_files.py).
    """
    path = Path(path).expanduser()
    if step is not None:
        if not path.is_dir():
            raise TIError(f"--step needs a run directory, and {path} is a file", "pass the run directory, or drop --step")
        embedding = _paired(step_files(path, step))
    elif path.is_dir():
        first = next((path / name for name in (EMBEDDING, LEGACY_EMBEDDING) if (path / name).is_file()), None)
        if first is None:
            raise TIError(f"{path} holds no {EMBEDDING} or {LEGACY_EMBEDDING}",
                          "pass an embedding file or a run/concept folder that has one")
        embedding = _paired([first] + ([path / EMBEDDINGS[1]] if (path / EMBEDDINGS[1]).is_file() else []))
        if embedding.format == "diffusers-sdxl":
            embedding.path = path
    elif path.is_file():
        return read_embedding_file(path)
    else:
        raise TIError(f"embedding {path} does not exist", "check the path")
    embedding.token = read_token(path) or embedding.token
    return embedding


def _paired(files: list[Path]) -> EmbeddingFile:
    """One concept from the diffusers file of each text encoder (SDXL: two files, one token)."""
    embedding = read_embedding_file(files[0])
    if len(files) > 1 and embedding.format == "diffusers":
        other = read_embedding_file(files[1])
        embedding = EmbeddingFile(files[0], "diffusers-sdxl", embedding.token, embedding.vectors + other.vectors,
                                  files=list(files))
    return embedding


def embedding_files(run_dir: Path) -> list[tuple[int | None, Path]]:
    """(step, first encoder's file) for every intermediate embedding in step order, then the final one
    (step None)."""
    run_dir = Path(run_dir)
    final = run_dir / EMBEDDING
    files = [(s, step_file(run_dir, s)) for s in saved_steps(run_dir)] + ([(None, final)] if final.is_file() else [])
    if not files:
        raise TIError(f"{run_dir} holds no learned_embeds*.safetensors", "pass the directory of a run that saved one")
    return files


# --- validation images, checkpoints -----------------------------------------------------------------------


def validation_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / VALIDATION / f"step-{step}"


def list_images(folder: Path) -> list[Path]:
    """The pictures of a folder (validation images, a concept's training images) in order; none if missing."""
    from ..data.images import list_image_files

    folder = Path(folder)
    return [p for p in list_image_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES] if folder.is_dir() else []


def validation_steps(run_dir: Path) -> list[tuple[int, list[Path]]]:
    """Every step that has validation images, in order, with its images (PP-II.png) in order."""
    steps = sorted((int(m.group(1)), p) for p in (Path(run_dir) / VALIDATION).glob("step-*")
                   if (m := _VALIDATION_STEP.fullmatch(p.name)) and p.is_dir())
    return [(step, images) for step, folder in steps if (images := list_images(folder))]


def prompt_images(images: list[Path], prompt: int) -> list:
    """The images (PIL, RGB) of prompt number `prompt` among one step's validation images (PP-II.png)."""
    from PIL import Image

    out = []
    for path in images:
        if path.name.startswith(f"{prompt:02d}-"):
            with Image.open(path) as image:
                out.append(image.convert("RGB"))
    return out


def last_validation(run_dir: Path) -> tuple[int | None, list[Path]]:
    """The last step that has validation images, and its images in order ((None, []): none yet)."""
    steps = validation_steps(run_dir)
    return steps[-1] if steps else (None, [])


def write_stopping_state(folder: Path, state: dict, kept: list[torch.Tensor] | None) -> None:
    """The stopping rule's state (JSON) and its kept rows (safetensors) into a checkpoint folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if kept is not None:
        tensors = {f"encoder_{i}": v.detach().to("cpu", torch.float32).contiguous() for i, v in enumerate(kept)}
        with atomic_path(folder / STOPPING_KEPT) as tmp:
            save_file(tensors, str(tmp))
    write_json(folder / STOPPING_STATE, {**state, "kept_rows": kept is not None})


def read_stopping_state(folder: Path) -> tuple[dict, list[torch.Tensor] | None] | None:
    """What `write_stopping_state` wrote (None when the checkpoint has none); never code, only JSON and tensors."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / STOPPING_STATE).is_file():
        return None
    state = read_json(folder / STOPPING_STATE)
    if not state.get("kept_rows"):
        return state, None
    tensors = load_file(str(folder / STOPPING_KEPT))
    return state, [tensors[f"encoder_{i}"] for i in range(len(tensors))]


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step}"


def checkpoint_step(path: Path) -> int:
    """N of checkpoint-N (-1 for another name)."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else -1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (a trainer_state.json is written last), oldest first."""
    found = [(checkpoint_step(p), p) for p in Path(run_dir).glob("checkpoint-*")
             if checkpoint_step(p) >= 0 and (p / CHECKPOINT_STATE).is_file()]
    return [p for _, p in sorted(found)]
