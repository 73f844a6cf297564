"""One experiment: from a composed config to a finished run directory."""

from __future__ import annotations

import gc
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config.checks import ConceptSettings, RunConfig, check_config
from .config import build, hydra_choices
from .data import ConceptImages, TextualInversionDataset
from .data.images import list_image_files
from . import slurm
from .records import run_dir as run_files
from .models.embeddings import EmbeddingFile, add_placeholder_tokens, check_fits, unsplice
from .errors import TIError
from .publish import check_can_push, publish
from .records.run_record import MetricsLog, RunRecord, write_summary
from .training import TrainingJob, checkpoints, packed, run_training
from .training.settings import HardwareSettings
from .evaluation.validation import Validator

log = logging.getLogger(__name__)

def ensure_concept_images(concept: ConceptSettings, cache_dir: Path) -> Path:
    """The concept's folder, filled from its source (Hub download, demo drawing) when missing or empty.

    Only folders inside the cache are filled: a mistyped path of the user's own is an error, not a
    place to download into or draw demo pictures in.
    """
    folder = Path(concept.train_data_dir).expanduser().resolve()
    empty = not folder.is_dir() or not list_image_files(folder)
    if empty and concept.source is not None and folder.is_relative_to(Path(cache_dir).expanduser().resolve()):
        build(concept.source, target_dir=folder)
    return folder


def hydra_identity() -> dict:
    """Sweep and job of this run when Hydra launched it, and its group choices (for tracker grouping)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    choices = {k: v for k, v in hydra_choices().items() if k in ("concept", "model", "hardware")}
    if hc.mode != RunMode.MULTIRUN:
        return {"choices": choices}
    sweep = "/".join(Path(str(hc.sweep.dir)).parts[-2:])
    return {"sweep": sweep, "job": int(hc.job.num), "choices": choices}


def check_precision(hardware: HardwareSettings) -> None:
    """Before any model is loaded: a precision this machine cannot run is a config error."""
    precision = hardware.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        raise TIError("fp16 mixed precision needs a CUDA GPU and none is available",
                      "use hardware=cpu (or hardware.mixed_precision=no or bf16)")
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise TIError("bf16 mixed precision needs an Ampere or newer GPU (bf16 is the default for SDXL)",
                      "use hardware.mixed_precision=fp16 (or hardware=v100)")


def no_accelerator() -> bool:
    """No CUDA or MPS: tell Accelerate so, and several processes (torchrun) train data-parallel on CPU."""
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def make_accelerator(hardware: HardwareSettings, tracker, run_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    return Accelerator(
        cpu=no_accelerator(),
        mixed_precision=hardware.mixed_precision,
        log_with=tracker.log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / run_files.TENSORBOARD)),
    )


_BUSY_WARNED: list[bool] = []  # once per process: a sweep's jobs share the machine's state


def warn_if_busy() -> None:
    """A CPU run on a machine that other work keeps busy goes several times slower: say so at its start."""
    from .records.environment import busy_machine_warning

    line = None if _BUSY_WARNED else busy_machine_warning()
    if line:
        _BUSY_WARNED.append(True)
        log.warning(line)


def run(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Train one concept; return the run directory. run.json says how it ended, whatever happens.

    The composed config stops here: it is checked into typed settings (`RunConfig`), which are all that
    travels on, and written into the run's folder with the record."""
    from accelerate import PartialState

    checked = check_config(cfg)  # every setting, before the run's folder exists
    run_dir = run_files.check_run_folder(_given_folder(checked.paths.output_dir))
    earlier = slurm.own_record(run_dir)  # SLURM runs a requeued job again: this run, interrupted
    if earlier is not None:
        if earlier.get("status") == "completed":
            log.info("%s: this SLURM job completed here before it was requeued; nothing is rerun", run_dir)
            return run_dir
        checked = continue_run(checked)
    # With several processes (accelerate launch) only the main one holds the folder and keeps the record.
    main = PartialState(cpu=no_accelerator()).is_main_process
    if main and no_accelerator():
        warn_if_busy()
    try:
        with run_files.claim(run_dir, checked.train.resume_from_checkpoint, own=earlier is not None) \
                if main else nullcontext():
            run_dir.mkdir(parents=True, exist_ok=True)
            # in memory: `_run` writes it first, so that a stop from then on (a SLURM requeue) is recorded
            record = RunRecord(run_dir, cfg, overrides, continues=earlier is not None) if main else None
            return _run(checked, run_dir, record, cfg, overrides)
    except OSError as exc:
        raise disk_full(exc, run_dir) or exc
    finally:
        if packed.current() is None:  # a pack resets once, when all its jobs are done
            reset_accelerate()  # also when the run failed before training began (the next run starts clean)


def continue_run(checked: RunConfig) -> RunConfig:
    """The same run, resuming from its latest checkpoint (none yet: it starts over). The configs it wrote
    stay those of the command."""
    if checked.train.resume_from_checkpoint:
        return checked
    return replace(checked, train=replace(checked.train, resume_from_checkpoint="latest"))


def start_record(record: RunRecord, cfg: DictConfig, overrides: list[str] | None) -> None:
    """run.json first, then the resolved config and what Hydra would write, once the folder is ours."""
    record.start()
    run_files.write_configs(record.run_dir, cfg)
    run_files.write_configs(record.run_dir, cfg, overrides, composed=True)
    slot = packed.current()
    if slot is not None:
        record.note(packed=slot.pack.describe(slot.index))


def _run(settings: RunConfig, run_dir: Path, record: RunRecord | None, cfg: DictConfig,
         overrides: list[str] | None) -> Path:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # a sweep's previous job must not count here
    try:
        if record:
            start_record(record, cfg, overrides)
        config = OmegaConf.to_container(cfg, resolve=True)
        # token, network and repository are checked before anything is trained, on the main process
        hub = settings.hub if record else None
        repo_id = check_can_push(hub, settings.concept.placeholder_token) if hub and hub.push else None
        resume_from = settings.train.resume_from_checkpoint
        if record and resume_from:
            start = checkpoints.resolve_resume(resume_from, run_dir)
            record.note(resumed_from=str(start) if start is not None else None)  # None: it starts over
        _train(settings, run_dir, record, config)
    except BaseException as exc:
        # a signal (Ctrl-C, SLURM's, submitit's requeue and exit) is an interruption, also when a library
        # wrapped SLURM's stop into an error of its own; anything else is a failure
        ended = slurm.stop_behind(exc)
        if record:
            record.finish("interrupted" if isinstance(ended, (KeyboardInterrupt, SystemExit)) else "failed", ended)
        if ended is exc:
            raise
        raise ended from exc
    if record:
        record.finish("completed")
        if repo_id:  # the run is complete whatever happens to the upload; a failed upload says how to retry
            record.note(hub=publish(run_dir, repo_id, hub))
    return run_dir


def _given_folder(output_dir):
    """The run's folder as the user gave it: Hydra turns an empty hydra.run.dir into the current directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        given = OmegaConf.select(HydraConfig.get(), "run.dir", default=None, throw_on_resolution_failure=False)
        if given is not None and not str(given).strip():
            return ""
    return output_dir


def disk_full(exc: OSError, run_dir: Path) -> TIError | None:
    """A full disk during a run, as the line that says how to go on: resume when the run saved a
    checkpoint, else start again (a resume of a run without one is refused)."""
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    problem = (f"no space left on the device while writing {exc.filename or run_dir} (the previous copy, if any, "
               "is intact)")
    if run_files.list_checkpoints(run_dir):
        return TIError(problem, f"free disk space, then resume with hydra.run.dir={run_dir} "
                                "train.resume_from_checkpoint=latest")
    return TIError(problem, "free disk space, then start the run again in a new folder (this one saved no checkpoint "
                            "to resume)")


@dataclass
class Prepared:
    """Everything a run needs before Accelerate starts: checked settings, images, model, tokens."""

    settings: RunConfig
    run_dir: Path
    images: ConceptImages
    parts: object
    embeddings: list  # the placeholder rows of each text encoder (SDXL: two)
    dataset: TextualInversionDataset
    init_from: dict | None = None
    # the resolved config as plain data: what the tracker shows and a resumed run compares
    config: dict | None = None
    # the initializer words the rows may start from (the first is in them now); several: the held-out
    # loss chooses before training; [] with concept.init_from
    initializers: list | None = None


def prepare(settings: RunConfig, run_dir: Path, config: dict | None = None) -> Prepared:
    """Check cheap things first (precision, data), then load the model and add the tokens."""
    from accelerate.utils import set_seed

    concept, data = settings.concept, settings.data
    set_seed(settings.run.seed)
    check_precision(settings.hardware)
    images = ConceptImages(ensure_concept_images(concept, Path(settings.paths.cache_dir)), data)
    settings.logger.identify(run_dir, **hydra_identity())
    init = start_embedding(concept, resuming=bool(settings.train.resume_from_checkpoint))
    slot = packed.current()  # a packed sweep's jobs share the model; each gets its own tokenizers and lookups
    parts = slot.pack.parts_for(settings.model.build, settings.hardware.channels_last) if slot \
        else settings.model.build()
    check_resolution(data.resolution, parts)
    if init:
        check_fits(init, [encoder.get_input_embeddings().embedding_dim for encoder in parts.text_encoders])
    words = [] if init else initializer_words(settings, parts, images)
    # the same tokens in every tokenizer, each encoder's rows from its own initializer row (or file rows)
    embeddings = [add_placeholder_tokens(tokenizer, encoder, concept.placeholder_token, words[0] if words else None,
                                         concept.num_vectors, init_vectors=init.vectors[i] if init else None)
                  for i, (tokenizer, encoder) in enumerate(zip(parts.tokenizers, parts.text_encoders))]
    dataset = TextualInversionDataset(len(images), data.repeats, parts.tokenizer, concept.placeholder_string,
                                      concept.learnable_property, data.flip_p,
                                      fields=parts.family.item_fields(parts.tokenizers, images.time_ids),
                                      captions=images.captions, caption_mode=data.captions, templates=data.templates)
    check_room(dataset, concept.num_vectors, data.captions != "none")
    return Prepared(settings, run_dir, images, parts, embeddings, dataset,
                    init_from=describe_init(init) if init else None, config=config, initializers=words)


def initializer_words(settings: RunConfig, parts, images: ConceptImages) -> list[str]:
    """The words the placeholder may start from, each one token of every tokenizer of the model:
    concept.initializer_token's (none for `auto`, checked before anything costly), then the words the
    evaluation's CLIP proposes from the images (evaluation.initializer_proposals). With several, the
    held-out loss chooses before the first step (`training.initializer`)."""
    words = settings.concept.candidates or []
    check_one_token(words, parts.tokenizers)
    evaluation = settings.evaluation
    if evaluation is not None and evaluation.enabled and evaluation.initializer_proposals:
        words = list(dict.fromkeys([*words, *proposed_words(settings, parts, images, named=words)]))
    if not words:
        raise TIError("concept.initializer_token=auto found no whole word in the model's vocabulary",
                      "name the words yourself, e.g. concept.initializer_token=[toy,cat,doll]")
    return words


def check_one_token(words: list[str], tokenizers) -> None:
    """An initializer word must be one row of every tokenizer: its row is what the placeholder copies."""
    for word in words:
        for tokenizer in tokenizers:
            pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(word, add_special_tokens=False))
            if len(pieces) != 1:
                raise TIError(f"concept.initializer_token {word!r} is {len(pieces)} tokens {pieces}, not one",
                              "choose single common words, such as 'toy', 'cat' or 'painting'")


def proposed_words(settings: RunConfig, parts, images: ConceptImages, named: list[str]) -> list[str]:
    """The evaluation CLIP's words for the images. They only add candidates: when that CLIP cannot be had
    (offline, not cached) and the user named a word, their word starts, with a warning."""
    from .evaluation.proposals import propose_words

    evaluation = settings.evaluation
    try:
        return propose_words(evaluation.clip_model, images.paths, parts.tokenizers,
                             settings.concept.learnable_property, evaluation.initializer_proposals,
                             device="cuda" if torch.cuda.is_available() else "cpu")
    except TIError as exc:
        if not named:
            raise
        log.warning("no initializer words proposed (%s): %s; evaluation.initializer_proposals=0 skips "
                    "the proposals", exc.problem, f"{named[0]} starts" if len(named) == 1 else
                    f"the held-out loss chooses among {', '.join(named)}")
        return []


def check_resolution(resolution: int, parts) -> None:
    """The images' size must fit the model's VAE (a multiple of its downsampling, large enough for the UNet)."""
    factor = parts.vae_scale_factor
    if resolution % factor or resolution < 8 * factor:
        raise TIError(f"data.resolution={resolution} does not fit this model's VAE, which needs "
                      f"a multiple of {factor} of at least {8 * factor}",
                      f"use e.g. data.resolution={parts.resolution}")


def check_room(dataset: TextualInversionDataset, num_vectors: int, captions: bool) -> None:
    """Every placeholder vector must reach the text encoder in every training prompt: a vector cut off by
    the limit on positions would stay untrained and still be saved as part of the concept."""
    room = dataset.placeholder_room()
    if room is None:
        return
    fit, prompt = room
    limit = dataset.tokenizer.model_max_length
    shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    fix = f"use concept.num_vectors={fit} or fewer" if fit else "put {} near the start of the prompt"
    if captions:
        fix += ", or shorten the captions (or put {} near their start)"
    raise TIError(f"only {fit} of concept.num_vectors={num_vectors} placeholder vectors fit in the text encoder's "
                  f"{limit} positions with the training prompt {shown!r}", fix)


def start_embedding(concept: ConceptSettings, resuming: bool = False):
    """`concept.init_from`: the embedding whose vectors the new rows start from (None: the initializer's row).

    A checkpoint to resume wins: its rows replace these once the loop loads it, as they would replace
    the initializer's; the file is still read and checked, because the resumed run is the same run.
    """
    if not concept.init_from:
        return None
    init = read_init(concept.init_from, concept.num_vectors)
    log.info("the placeholder rows start from %s (%s, token %r, %d vectors)%s", init.path, init.format, init.token,
             init.num_vectors, "; a checkpoint to resume from replaces them" if resuming else "")
    return init


def read_init(path, num_vectors: int) -> EmbeddingFile:
    """The embedding a run starts from (`concept.init_from`): readable, and with as many vectors as the
    concept trains (a silent truncation or padding would be a different concept). `check_fits` follows
    once the model is loaded."""
    embedding = run_files.read_embedding(path)
    if embedding.num_vectors != num_vectors:
        raise TIError(f"concept.init_from {path} holds {embedding.num_vectors} vectors and concept.num_vectors is "
                      f"{num_vectors}", f"set concept.num_vectors={embedding.num_vectors}")
    return embedding


def describe_init(init) -> dict:
    """What run.json records about the start: where, which format, and hashes of the file and the vectors."""
    from .records.run_record import sha256

    return {"path": str(Path(init.path).resolve()), "format": init.format, "token": init.token,
            "num_vectors": init.num_vectors, "sha256": sha256(init.path) if Path(init.path).is_file() else None,
            "vectors_sha256": [tensor_sha256(v) for v in init.vectors]}


def comparable_settings(config: dict | None) -> dict:
    """The resolved settings a resumed run compares with its checkpoint's (paths and resume excluded)."""
    from .records.trackers import flatten

    flat = flatten(config or {})
    return {k: v for k, v in flat.items() if not k.startswith(("paths.", "train.resume_from_checkpoint",
                                                                "reproduced_from"))}


def fit(p: Prepared, accelerator, metrics_log_factory, validator=None, evaluator=None):
    """The training loop on a prepared run (the experiment and the benchmark both come through here)."""
    s = p.settings
    return run_training(TrainingJob(
        accelerator=accelerator, parts=p.parts, embeddings=p.embeddings,
        placeholder_token=s.concept.placeholder_token, pixels=p.images.pixels, dataset=p.dataset,
        optimizer=s.optimizer, lr_scheduler=s.lr_scheduler,
        train=s.train, hardware=s.hardware, data=s.data, run_dir=p.run_dir, seed=s.run.seed,
        resume_state={"placeholder_tokens": s.concept.tokens, "model": p.parts.source,
                      "config": comparable_settings(p.config)},
        metrics_log_factory=metrics_log_factory, validate=validator, evaluate=evaluator,
        initializers=p.initializers if p.initializers and len(p.initializers) > 1 else None,
    ))


def make_evaluator(p: Prepared, accelerator, validator):
    """The run's evaluator, or None when evaluation is off; it generates images like the validator."""
    from .evaluation import Evaluator

    s = p.settings
    if s.evaluation is None or not s.evaluation.enabled:
        return None
    generator = validator or Validator(s.validation, p.parts, p.parts.text_encoder, accelerator, s.logger, p.run_dir)
    evaluator = Evaluator(s.evaluation, parts=p.parts, text_encoder=p.parts.text_encoder, accelerator=accelerator,
                          run_dir=p.run_dir, concept=s.concept, image_paths=p.images.paths, generator=generator,
                          images=p.images)
    if p.initializers:
        evaluator.use_initializer(p.initializers[0])
    return evaluator


def _train(settings: RunConfig, run_dir: Path, record: RunRecord | None, config: dict) -> None:
    started = time.perf_counter()
    p = prepare(settings, run_dir, config)
    if record and p.init_from:
        record.note(init_from=p.init_from)
    accelerator = make_accelerator(settings.hardware, settings.logger, run_dir)
    failed = True
    try:
        settings.logger.start(accelerator, run_dir, config, resuming=bool(settings.train.resume_from_checkpoint),
                              beside_others=packed.current() is not None)
        validator = (Validator(settings.validation, p.parts, p.parts.text_encoder, accelerator, settings.logger,
                               run_dir) if settings.validation.enabled else None)
        evaluator = make_evaluator(p, accelerator, validator)
        if evaluator is None and p.initializers and len(p.initializers) > 1:
            raise TIError(f"concept.initializer_token names {len(p.initializers)} words, chosen by the held-out loss, "
                          "which is off for this run", f"name one word, e.g. concept.initializer_token={p.initializers[0]}")
        result = fit(p, accelerator, partial(MetricsLog, run_dir, accelerator, accelerator.device), validator,
                     evaluator)
        if accelerator.num_processes > 1:  # the processes trained the same rows: the log says so
            for i, vectors in enumerate(result.last):
                log.info("process %d of %d: text encoder %d's trained rows at step %d, tensor sha256 %s",
                         accelerator.process_index, accelerator.num_processes, i + 1, result.global_step,
                         tensor_sha256(vectors))
        if accelerator.is_main_process:
            finish_run(p, result, evaluator, accelerator, time.perf_counter() - started, record)
        failed = False
    finally:
        settings.logger.finish(accelerator, failed=failed)  # run() then resets Accelerate


def finish_run(p: Prepared, result, evaluator, accelerator, wall_seconds: float,
               record: RunRecord | None = None) -> None:
    """On the main process: the kept step's embedding as the concept, its scores in summary.json, where and
    why the run stopped in run.json and summary.json, and the end of the log: where the result is and what
    to run next."""
    concept, run_dir, outcome = p.settings.concept, p.run_dir, result.outcome
    scores = {}
    if evaluator is not None:
        if outcome["kept_step"] != result.global_step and evaluator.images_on:
            with torch.no_grad():  # the kept rows in the text encoders, for the kept step's images
                for embedding, rows in zip(p.embeddings, result.vectors):
                    embedding.vectors.copy_(rows.to(embedding.vectors))
        evaluator.score_kept(outcome["kept_step"])
        scores = evaluator.summary(outcome["kept_step"])
        if outcome["kept_heldout_loss"] is not None:
            scores["heldout_loss"] = outcome["kept_heldout_loss"]
    run_files.write_concept(run_dir, concept.placeholder_token, result.vectors, concept.learnable_property,
                            other_tools=True)
    for encoder in p.parts.text_encoders:
        unsplice(encoder)
    flat = {k: v for k, v in outcome.items() if k not in ("stop_rule", "kept_heldout_loss")}  # heldout_loss: the kept's
    chosen = {"initializer": result.initializer["chosen"]} if result.initializer else {}
    summary = write_summary(run_dir, final_loss=result.final_loss, steps=result.global_step,
                            wall_seconds=wall_seconds, train_seconds=result.seconds,
                            steps_trained=result.steps_trained, device=accelerator.device,
                            extra={"num_images": len(p.images), **flat, **scores, **chosen})
    if record:
        record.note(stopping=outcome, **({"initializer": result.initializer} if result.initializer else {}))
    log.info("%s", next_steps(p, result, summary["learned_embeds_sha256"]))


def next_steps(p: Prepared, result, file_sha256: str) -> str:
    """The end of a run: where the result is, which step it holds and why, and the commands to look at it."""
    import shlex

    concept, run_dir, outcome = p.settings.concept, p.run_dir, result.outcome
    where = shlex.quote(str(run_dir))
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    prompt = concept.validation_prompt or f"a photo of {concept.placeholder_token}"
    lines = [f"done: {result.global_step} steps in {result.seconds:.1f}s (last training loss {loss}); "
             f"{outcome['stop_reason']}",
             f"result: {run_dir / run_files.EMBEDDING} (sha256 {file_sha256})",
             f"  holds step {outcome['kept_step']}, kept by {outcome['kept_by']}",
             "next:"]
    if hydra_choices().get("model") == "toyworld" or "toyworld" in str(p.parts.source):
        lines.append(f"  python -m ti_experiments.toyworld.picture {where}     # the concept beside its word")
    lines += [f"  python -m ti_experiments.generate {where} {shlex.quote(prompt)}",
              f"  python -m ti_experiments.report {where}"]
    return "\n".join(lines)


def tensor_sha256(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def objective(run_dir: Path, key: str) -> float:
    """The number a searching sweeper optimises: summary.json[key]; the worst value in the key's direction
    (+inf for a loss, -inf for clip_i/clip_t/dino) when the run left none."""
    import math

    from .evaluation import worst

    value = run_files.read_summary(run_dir).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else worst(key)


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; the next run in this process (sweeps, tests) starts clean."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
