"""Checkpoints: the learned rows, the optimizer, the LR schedule, the RNGs and the scaler, in files that
cannot carry code (safetensors and JSON), written and read by this module alone.

This project never calls Accelerate's `save_state`/`load_state`: they pickle the state of what
`register_for_checkpointing` holds (`custom_checkpoint_0.pkl`) and the rest in torch's format, so a
checkpoint someone hands you would run code on resume. Here every value is a tensor (in
safetensors) or a number, string or list (in JSON), so a checkpoint is data, whoever made it.

A checkpoint is written to a temporary folder and renamed, so a run killed at any moment leaves either a
complete `checkpoint-N` (its trainer_state.json is written last) or none. The frozen model weights are
never copied into it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import TIError, cause
from ..records.files import atomic_path, write_text_atomic
from ..records.run_dir import CHECKPOINT_STATE as STATE_FILE
from ..records.run_dir import checkpoint_dir, checkpoint_step, list_checkpoints

log = logging.getLogger(__name__)

TENSORS = "state.safetensors"  # the learned rows (`vectors.I`, one per text encoder) and the optimizer's tensors
NUMBERS = "state.json"  # the optimizer's other values, the LR schedule's and the scaler's
RNG_TENSORS = "rng-{}.safetensors"  # each process's torch generators
RNG_NUMBERS = "rng-{}.json"  # each process's Python and NumPy generators
FORMAT = 2
# what Accelerate's save_state left in checkpoints of earlier versions (pickles)
OLD_FORMAT = ("custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl", "model.safetensors")


@dataclass
class Trainable:
    """What a checkpoint holds the state of: the placeholder modules (as prepared), optimizer and schedule."""

    accelerator: object
    models: list
    optimizer: object
    lr_scheduler: object

    def vectors(self) -> list[torch.Tensor]:
        return [self.accelerator.unwrap_model(m).vectors for m in self.models]


# --- saving -----------------------------------------------------------------------------------------------


def save_checkpoint(trainable: Trainable, run_dir: Path, step: int, state: dict, total_limit: int | None,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """`extra(folder)` writes what else belongs to the step (the stopping rule's state) before the
    checkpoint is marked complete."""
    accelerator = trainable.accelerator
    target = checkpoint_dir(run_dir, step)
    tmp = target.with_name(f".{target.name}.tmp")
    if accelerator.is_main_process:
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()
        elif tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        _save_rng(tmp, accelerator.process_index)
        if accelerator.is_main_process:
            _save_state(tmp, trainable)
            if extra is not None:
                extra(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # last: a checkpoint without it is incomplete
            write_text_atomic(tmp / STATE_FILE, json.dumps({**state, "global_step": step, "format": FORMAT},
                                                           indent=2))
    except BaseException:  # a full disk: no half-written checkpoint is left, the previous ones stay
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        if target.is_symlink():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(run_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", target)
    accelerator.wait_for_everyone()
    return target


def _save_tensors(path: Path, tensors: dict) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))


def _save_json(path: Path, data) -> None:
    try:
        text = json.dumps(data, indent=1, allow_nan=True)
    except TypeError as exc:
        raise TIError(f"the training state has a value a checkpoint cannot hold ({exc})",
                      "use one of the project's optimizers and schedules (optimizer=..., lr_scheduler=...)") from None
    write_text_atomic(path, text)


def _save_state(folder: Path, trainable: Trainable) -> None:
    tensors = {f"vectors.{i}": v.float() for i, v in enumerate(trainable.vectors())}
    optimizer_tensors, optimizer_numbers = optimizer_files(trainable.optimizer)
    scaler = getattr(trainable.accelerator, "scaler", None)
    _save_tensors(folder / TENSORS, {**tensors, **optimizer_tensors})
    _save_json(folder / NUMBERS, {
        "optimizer": optimizer_numbers,
        "lr_scheduler": trainable.lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
    })


def optimizer_files(optimizer) -> tuple[dict, dict]:
    """An optimizer's state_dict as safetensors (`optimizer.PID.NAME` tensors) and JSON (the rest), the
    split `optimizer_state` reads back: what anything the project trains checkpoints its optimizer with."""
    state = optimizer.state_dict()
    tensors, numbers = {}, {}
    for pid, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                numbers[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "numbers": numbers}


def _save_rng(folder: Path, index: int) -> None:
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _save_tensors(folder / RNG_TENSORS.format(index), tensors)
    _save_json(folder / RNG_NUMBERS.format(index), {
        "python": [version, list(words), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]})


# --- resuming ---------------------------------------------------------------------------------------------


def resolve_resume(resume_from: str | None, run_dir: Path) -> Path | None:
    """'latest' -> newest checkpoint of this run dir (none: a fresh start, as in the example);
    a path -> that checkpoint, or the newest checkpoint of that run directory."""
    if not resume_from:
        return None
    if str(resume_from) == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            log.warning("train.resume_from_checkpoint=latest: no checkpoint in %s, starting fresh", run_dir)
            return None
        return found[-1]
    path = Path(resume_from).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    if path.is_dir() and list_checkpoints(path):
        return list_checkpoints(path)[-1]
    raise TIError(f"train.resume_from_checkpoint={resume_from!r} is not a checkpoint-N folder or a run "
                  "directory with one", "use latest, a checkpoint-N path, or a run directory")


def load_checkpoint(trainable: Trainable, path: Path, expected: dict) -> int:
    """Restore the state; refuse a checkpoint made for other tokens or another model, one in the old
    (pickled) format, or a broken one. Nothing in it is unpickled."""
    older = [c for c in list_checkpoints(path.parent) if checkpoint_step(c) < checkpoint_step(path)]

    def corrupt(reason: str) -> TIError:
        fix = (f"resume from the previous one: train.resume_from_checkpoint={older[-1]}" if older
               else f"start again in a new folder; its saved embeddings ({path.parent}/learned_embeds-steps-N"
               ".safetensors) can be the start: concept.init_from=PATH")
        return TIError(f"checkpoint {path} is corrupt or incomplete ({reason})", fix)

    try:
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            raise ValueError("no global_step")
    except (OSError, ValueError) as exc:
        raise corrupt(f"{STATE_FILE}: {exc.__class__.__name__}") from None
    if state.get("format") != FORMAT:
        old = [name for name in OLD_FORMAT if (path / name).exists()]
        raise TIError(f"checkpoint {path} is in an older format ({', '.join(old) or 'no ' + TENSORS}), whose "
                      "pickled files can run code and are not loaded",
                      f"start a new run in a new folder; to go on from where it was, start from its saved "
                      f"embedding: concept.init_from={path.parent}/learned_embeds-steps-N.safetensors")
    for key in ("placeholder_tokens", "model"):
        if state.get(key) != expected.get(key):
            raise TIError(f"checkpoint {path} was made with {key}={state.get(key)!r}, this run has "
                          f"{expected.get(key)!r}", "resume with the settings of the original run")
    _warn_changed(path, state.get("config") or {}, expected.get("config") or {})
    try:
        _load_state(trainable, path)
        _load_rng(path, trainable.accelerator.process_index)
    except TIError as exc:
        raise corrupt(exc.problem) from None
    except Exception as exc:  # noqa: BLE001 - whatever broke in it, the remedy is the same
        raise corrupt(cause(exc)) from None
    log.info("resumed from %s at step %d", path, state["global_step"])
    return int(state["global_step"])


def _warn_changed(path: Path, before: dict, now: dict) -> None:
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if before and changed:
        log.warning("resuming %s with changed settings: %s", path.name,
                    ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed))


def _load_state(trainable: Trainable, path: Path) -> None:
    tensors = load_file(str(path / TENSORS))
    numbers = json.loads((path / NUMBERS).read_text())
    vectors = trainable.vectors()
    for i, current in enumerate(vectors):
        saved = tensors.get(f"vectors.{i}")
        if saved is None or tuple(saved.shape) != tuple(current.shape):
            raise TIError(f"{TENSORS} has no {tuple(current.shape)} embedding for text encoder {i + 1} "
                          f"(vectors.{i}: {None if saved is None else tuple(saved.shape)})")
        if not torch.isfinite(saved).all():
            raise TIError(f"{TENSORS} holds an embedding that is not finite (NaN or inf)")
    if any(k.startswith("vectors.") and int(k.split(".")[1]) >= len(vectors) for k in tensors):
        raise TIError(f"{TENSORS} holds embeddings for more text encoders than this model has")
    with torch.no_grad():
        for i, current in enumerate(vectors):
            current.copy_(tensors[f"vectors.{i}"].to(current.device, current.dtype))
    trainable.optimizer.load_state_dict(optimizer_state(trainable.optimizer, tensors, numbers["optimizer"]))
    trainable.lr_scheduler.load_state_dict(numbers["lr_scheduler"])
    scaler = getattr(trainable.accelerator, "scaler", None)
    if scaler is not None and numbers.get("scaler") is not None:
        scaler.load_state_dict(numbers["scaler"])


def optimizer_state(optimizer, tensors: dict, saved: dict) -> dict:
    """The optimizer's state_dict from the files; JSON's lists become the tuples the optimizer holds
    (AdamW's betas)."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in saved["numbers"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    current = optimizer.state_dict()["param_groups"]
    groups = saved["param_groups"]
    if len(groups) != len(current):
        raise TIError(f"the optimizer state has {len(groups)} parameter groups, this run's optimizer {len(current)}")
    groups = [{k: tuple(v) if isinstance(now.get(k), tuple) and isinstance(v, list) else v for k, v in group.items()}
              for group, now in zip(groups, current)]
    return {"state": state, "param_groups": groups}


def _load_rng(path: Path, index: int) -> None:
    tensors_file, numbers_file = path / RNG_TENSORS.format(index), path / RNG_NUMBERS.format(index)
    if not tensors_file.is_file() or not numbers_file.is_file():
        log.warning("%s has no random state for process %d: the resumed run draws other noise", path.name, index)
        return
    tensors = load_file(str(tensors_file))
    numbers = json.loads(numbers_file.read_text())
    version, words, gauss = numbers["python"]
    random.setstate((int(version), tuple(int(w) for w in words), gauss))
    kind, keys, pos, has_gauss, cached = numbers["numpy"]
    np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss),
                         float(cached) if math.isfinite(cached) else 0.0))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
