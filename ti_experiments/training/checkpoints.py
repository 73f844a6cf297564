"""Checkpoints: Accelerate state (optimizer, LR schedule, RNG, scaler) plus the learned rows only.

A checkpoint is written to a temporary folder and renamed, so a run killed at any moment leaves
either a complete `checkpoint-N` or none. The frozen model weights are never copied into it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..models.embeddings import PlaceholderEmbedding
from ..errors import TIError
from ..records.run_dir import CHECKPOINT_STATE as STATE_FILE
from ..records.run_dir import checkpoint_dir, checkpoint_step, list_checkpoints

log = logging.getLogger(__name__)


def register_hooks(accelerator) -> None:
    """Keep the frozen rows out of checkpoints: save and load only `vectors`."""

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            if isinstance(accelerator.unwrap_model(model), PlaceholderEmbedding):
                weights[i] = {"vectors": weights[i]["vectors"]}

    accelerator.register_save_state_pre_hook(save_hook)


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, total_limit: int | None) -> Path:
    target = checkpoint_dir(run_dir, step)
    tmp = target.with_name(f".{target.name}.tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "global_step": step}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(run_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", target)
    accelerator.wait_for_everyone()
    return target


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


def load_checkpoint(accelerator, path: Path, expected: dict) -> int:
    """Restore the state; refuse a checkpoint made for other tokens or another model, or a broken one."""
    older = [c for c in list_checkpoints(path.parent) if checkpoint_step(c) < checkpoint_step(path)]

    def corrupt(reason: str) -> TIError:
        fix = (f"resume from the previous one: train.resume_from_checkpoint={older[-1]}" if older
               else "delete it, or start without train.resume_from_checkpoint")
        return TIError(f"checkpoint {path} is corrupt or incomplete ({reason})", fix)

    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise corrupt(f"{STATE_FILE}: {exc.__class__.__name__}") from None
    for key in ("placeholder_tokens", "model"):
        if state.get(key) != expected.get(key):
            raise TIError(f"checkpoint {path} was made with {key}={state.get(key)!r}, this run has "
                          f"{expected.get(key)!r}", "resume with the settings of the original run")
    before, now = state.get("config") or {}, expected.get("config") or {}
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if before and changed:
        log.warning("resuming %s with changed settings: %s", path.name,
                    ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed))
    try:
        accelerator.load_state(str(path), strict=False)
    except Exception as exc:  # noqa: BLE001 - whatever broke in it, the remedy is the same
        raise corrupt(str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__) from None
    log.info("resumed from %s at step %d", path, state["global_step"])
    return int(state["global_step"])
