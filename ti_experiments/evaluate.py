"""`python -m ti_experiments.evaluate RUN_DIR [evaluation=NAME] [KEY=VALUE ...]`: score a finished run.

Scores the run's embedding (`learned_embeds.safetensors`, the kept step) and every saved intermediate
one (`learned_embeds-steps-N.safetensors`) with the run's own model, images and settings: the held-out
loss, and CLIP-I / CLIP-T / DINO when image metrics are on (`evaluation.image_metrics=true` on a CPU).
Writes `evaluation.json` (one entry per embedding) into the run directory and the run's embedding's
scores into `summary.json`, so runs made before evaluation existed compare with new ones; prints the
step each metric prefers (`export --step N` writes that step's embedding out).
A run without an `evaluation` node gets `conf/evaluation/default.yaml` (`tiny.yaml` for the tiny model).
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import yaml
from omegaconf import OmegaConf

from .records import run_dir as run_files
from .errors import TIError, command_arguments, report_or_raise

log = logging.getLogger("ti_experiments.evaluate")

USAGE = "usage: python -m ti_experiments.evaluate RUN_DIR [evaluation=NAME] [KEY=VALUE ...]"
EXAMPLES = (
    ("python -m ti_experiments.evaluate outputs/runs/DATE/TIME", "with the run's own evaluation settings"),
    ("python -m ti_experiments.evaluate outputs/runs/DATE/TIME evaluation.image_metrics=true",
     "CLIP-I, CLIP-T and DINO too (off by default on a CPU)"),
    ("python -m ti_experiments.evaluate outputs/runs/DATE/TIME evaluation.image_metrics=false", "held-out loss only"),
)


def load_config(run_dir: Path, overrides: list[str]):
    """The run's composed config, with the evaluation node chosen or added, and the overrides applied."""
    from .config import compose, options

    # Hydra's composed config keeps the interpolations (the cache as it is today); a run started from
    # Python has only the resolved one
    cfg = run_files.read_config(run_dir)
    if cfg is None:
        raise TIError(f"{run_dir} has neither {run_files.COMPOSED_CONFIG} nor {run_files.RESOLVED_CONFIG}, so it is "
                      "not a run directory", "pass the directory of a run (it holds run.json and its config)")
    group = [o.split("=", 1)[1] for o in overrides if o.startswith("evaluation=")]
    if group or cfg.get("evaluation") is None:
        # the configs decide, as for the run: a model's config chooses its evaluation (model=tiny: tiny)
        if group and group[-1] not in options("evaluation"):
            raise TIError(f"evaluation={group[-1]} is unknown", f"use one of {', '.join(options('evaluation'))}")
        model = run_files.choice(run_dir, "model")
        node = compose([*([f"model={model}"] if model in options("model") else []),
                        *([f"evaluation={group[-1]}"] if group else [])]).evaluation
        OmegaConf.update(cfg, "evaluation", OmegaConf.to_container(node), merge=False)
    for item in overrides:
        if item.startswith("evaluation="):
            continue
        key, sep, value = item.partition("=")
        if not sep or OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            raise TIError(f"{item!r} is not KEY=VALUE with a key of the run's config",
                          "e.g. evaluation.image_metrics=true evaluation.num_images=2")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir), merge=False)
    return cfg


@dataclass
class Scoring:
    """A run's model, images and evaluator, placed as its training placed them: what scores any embedding
    file of that concept on the run's own held-out triples and image prompts."""

    cfg: object
    evaluator: object
    embeddings: list  # each text encoder's placeholder rows, which a scored file's vectors replace
    summary: dict
    files: list
    kept_step: int

    def score(self, files: list[tuple[int | None, Path]]) -> list[dict]:
        """One entry per (step, file); a file without a step counts at the run's kept step."""
        return score_files(self.evaluator, self.embeddings, files, self.kept_step)


@contextmanager
def scoring(run_dir: Path, overrides: list[str] | None = None) -> Iterator[Scoring]:
    """Open a finished run for scoring (its config, with `overrides`, checked as a run's is)."""
    from accelerate import Accelerator

    from .config.checks import check_config
    from .data import ConceptImages
    from .models.embeddings import add_placeholder_tokens
    from .evaluation import Evaluator
    from .experiment import check_precision, ensure_concept_images, no_accelerator, reset_accelerate
    from .training.placement import Placement, process_settings
    from .evaluation.validation import Validator

    cfg = load_config(run_dir, list(overrides or []))
    files = run_files.embedding_files(run_dir)
    checked = check_config(cfg)
    settings = checked.evaluation
    if settings is None or not settings.enabled:
        raise TIError("evaluation.enabled is false", "drop evaluation=none / evaluation.enabled=false")
    concept, hardware, validation = checked.concept, checked.hardware, checked.validation
    check_precision(hardware)
    images = ConceptImages(ensure_concept_images(concept, Path(checked.paths.cache_dir)), checked.data)
    parts = checked.model.build()
    word = run_files.initializer_word(run_dir, cfg)
    if word is None:
        raise TIError(f"{run_dir} names several initializer words and its run.json does not say which one "
                      "started", "add concept.initializer_token=WORD (the word the run started from)")
    embeddings = [add_placeholder_tokens(tokenizer, encoder, concept.placeholder_token, word, concept.num_vectors)
                  for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders)]
    accelerator = Accelerator(cpu=no_accelerator(), mixed_precision=hardware.mixed_precision)
    placement = Placement.of(accelerator, hardware)
    try:
        with process_settings(hardware, placement.device):
            cache = _place(parts, images, placement)
            validator = Validator(validation, parts, parts.text_encoder, accelerator, None, run_dir)
            evaluator = Evaluator(settings, parts=parts, text_encoder=parts.text_encoder, accelerator=accelerator,
                                  run_dir=run_dir, concept=concept, image_paths=images.paths, generator=validator,
                                  images=images)
            evaluator.use_initializer(word)
            summary = run_files.read_summary(run_dir)
            last_step = max([s for s, _ in files if s is not None] + [0])
            final_step = int(summary.get("steps") or last_step)
            kept_step = int(summary.get("kept_step") or final_step)  # what learned_embeds.safetensors holds
            evaluator.attach(cache, placement.weight_dtype, max_steps=final_step)
            yield Scoring(cfg, evaluator, embeddings, summary, files, kept_step)
    finally:
        reset_accelerate()


def evaluate_run(run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Score every embedding of a run; write evaluation.json and the run embedding's scores into summary.json."""
    run_dir = Path(run_dir).expanduser().resolve()
    with scoring(run_dir, overrides) as opened:
        entries = opened.score(opened.files)
        evaluator, kept_step, summary = opened.evaluator, opened.kept_step, opened.summary
        result = {"run_dir": str(run_dir), "settings": OmegaConf.to_container(opened.cfg.evaluation, resolve=True),
                  "embeddings": entries, **evaluator.summary(kept_step), "preferred": preferred_steps(entries)}
    run_files.write_json(run_dir / run_files.EVALUATION, result)
    summary.update(evaluator.summary(kept_step))
    run_files.write_summary(run_dir, summary)
    return result


def _place(parts, images, placement):
    """The frozen models placed as training placed them (so the held-out loss comes out the same); the
    training images' latents, without flips."""
    from .data import LatentCache

    dtype = placement.place_vae(parts)
    cache = LatentCache.build(parts.vae, images.pixels, with_flips=False, device=placement.device, dtype=dtype)
    placement.release_vae(parts, keep_decoder=True)
    placement.place_unet(placement.load_unet(parts), training=False)
    placement.place_text_encoders([e.requires_grad_(False) for e in parts.text_encoders], training=False)
    return cache


def preferred_steps(entries: list[dict]) -> dict:
    """The step each metric prefers (lowest loss, highest similarity), and that step's file."""
    from .evaluation import METRICS, direction

    best = {}
    for metric in METRICS:
        scored = [e for e in entries if e.get(metric) is not None]
        if scored:
            pick = (max if direction(metric) == "maximize" else min)(scored, key=lambda e: e[metric])
            best[metric] = {"step": pick["step"], "file": pick["file"], "value": pick[metric]}
    return best


def score_files(evaluator, embeddings: list, files: list, final_step: int) -> list[dict]:
    """One entry per embedding file, in order; the run's embedding counts at its kept step.
    `embeddings`: the placeholder rows of each text encoder, which each file's vectors replace in turn."""
    from .models.embeddings import check_fits

    entries, seen = [], {}
    num_vectors = embeddings[0].vectors.shape[0]
    for step, path in files:
        found = run_files.read_embedding(path)
        check_fits(found, [e.embedding_dim for e in embeddings])
        if found.num_vectors != num_vectors:
            raise TIError(f"{path.name} has {found.num_vectors} vectors, the run's concept.num_vectors is "
                          f"{num_vectors}", "pass the run directory the file belongs to")
        step = final_step if step is None else step
        key = (step, b"".join(v.numpy().tobytes() for v in found.vectors))
        if key in seen:  # the final embedding is often the last saved one: score it once
            entries.append({**seen[key], "file": path.name})
            continue
        with torch.no_grad():
            for embedding, vectors in zip(embeddings, found.vectors):
                embedding.vectors.copy_(vectors.to(embedding.vectors.device))
        values = evaluator(step, images=evaluator.images_on)
        seen[key] = {"step": step, "file": path.name, **values}
        entries.append(seen[key])
    return entries


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        from .cli_help import page

        print(page(USAGE, "ti_experiments.evaluate", EXAMPLES, __doc__.split("\n\n", 1)[1]))
        return 0
    try:
        command_arguments(args, USAGE)
    except TIError as exc:
        return report_or_raise(exc)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .quiet import loading_bars_off

    loading_bars_off()

    try:
        result = evaluate_run(Path(args[0]), args[1:])
    except Exception as exc:  # noqa: BLE001 - a user error becomes one line (exit 2); a bug keeps its traceback
        return report_or_raise(exc)
    names = ("heldout_loss", "heldout_loss_init", "heldout_loss_words", "clip_i", "clip_t", "dino")
    for entry in result["embeddings"]:
        print(f"{entry['file']:<40} step {entry['step']:>6}  " +
              "  ".join(f"{k} {entry[k]:.4f}" for k in names if k in entry))
    for metric, pick in result["preferred"].items():
        if metric in ("heldout_loss", "clip_i", "dino"):
            print(f"{'lowest' if metric == 'heldout_loss' else 'highest'} {metric}: step {pick['step']} "
                  f"({pick['value']:.4f}, {pick['file']})")
    print(f"written: {Path(result['run_dir']) / run_files.EVALUATION}, {run_files.SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
