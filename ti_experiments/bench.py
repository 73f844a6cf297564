"""`python -m ti_experiments.bench [--warmup N] [--steps N] [--phase-steps N] [overrides...]`
(also `--launch COMMAND...` and `--sweep N [overrides...]`, below)

Times real optimizer steps of the training loop after a warm-up, then times each phase of the same
step on its own, and prints a table and one JSON line. The limit ratio is the median step divided by
the work no implementation can skip: text encoder and UNet forward and backward on the same batch.
Overrides are the experiment's (default concept: demo), e.g. `model=sd15 model.random_init=true
data.resolution=256 hardware=cpu`.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from .config import compose
from .errors import ArgumentParser, TIError, report_or_raise
from .training.loss import text_conditioning, training_inputs, unet_losses
from .training.placement import Placement

PHASES = ("data", "latents (cache)", "text encoder fwd", "unet fwd", "unet bwd", "text encoder bwd",
          "optimizer")
UNAVOIDABLE = ("text encoder fwd", "unet fwd", "unet bwd", "text encoder bwd")


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


class StepTimes:
    """A MetricsLog stand-in: remembers when each optimizer step ended."""

    def __init__(self, start_step: int = 0):
        self.ends: list[float] = []
        self.first_end_wall: float | None = None

    def log(self, step: int, values: dict) -> dict:
        self.ends.append(time.perf_counter())
        if self.first_end_wall is None:
            self.first_end_wall = time.time()
        return {"lr": values.get("lr", 0.0), "steps_per_sec": None}


def time_phases(p, trained, accelerator, n: int) -> list[dict]:
    """Each phase of a training step, one at a time, synchronised: the loop's own functions (the item
    draws, the text conditioning, the UNet's loss), with the UNet's inputs cut from the text encoders'
    graph so that the two backward passes are timed apart."""
    parts, device = p.parts, accelerator.device
    cache, optimizer, dtype = trained.cache, trained.optimizer, trained.weight_dtype
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = iter(trained.dataloader)
    rows = []
    def tick(t, name, start):
        sync()
        t[name] = time.perf_counter() - start
        return time.perf_counter()

    for _ in range(n):
        t = {}

        now = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(trained.dataloader)
            batch = next(batches)
        now = tick(t, "data", now)
        with accelerator.autocast():
            latents, noise, steps = training_inputs(parts, cache, batch, dtype, device)
            now = tick(t, "latents (cache)", now)
            hidden, added = text_conditioning(parts, parts.text_encoder, batch, dtype, device)
            now = tick(t, "text encoder fwd", now)
            # the UNet's inputs as leaves, so its backward and the text encoders' are timed apart
            outputs = [hidden] + ([added["text_embeds"]] if added else [])
            leaves = [o.detach().requires_grad_(True) for o in outputs]
            added_leaves = {**added, "text_embeds": leaves[1]} if added else None
            loss = unet_losses(parts, latents, noise, steps, leaves[0], added_leaves).mean()
            now = tick(t, "unet fwd", now)
        accelerator.backward(loss)
        now = tick(t, "unet bwd", now)
        torch.autograd.backward(outputs, [leaf.grad for leaf in leaves])
        now = tick(t, "text encoder bwd", now)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tick(t, "optimizer", now)
        rows.append(t)
    return rows


def _fresh_vae(p, placement: Placement):
    """The reference step needs a whole VAE (training drops its encoder once the latents are cached)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(p.parts.source, subfolder="vae", local_files_only=True)
    return placement.put(vae).requires_grad_(False).eval()


def time_reference(p, accelerator, n: int, warmup: int) -> list[float]:
    """Optimizer steps computed the way the diffusers examples compute them, on the same model and
    batch: VAE encode every micro-step, the configured optimizer over each whole embedding matrix (SDXL:
    both encoders'), frozen rows restored."""
    import random

    from .data.templates import TEMPLATES
    from .models.embeddings import unsplice
    from .training.memory import plain_backward

    parts, device, s = p.parts, accelerator.device, p.settings
    placement = Placement.of(accelerator, s.hardware)
    dtype = placement.weight_dtype
    vae = _fresh_vae(p, placement)
    plain_backward(parts.unet)  # autograd's own layers, as the example has
    weights, originals, frozen = [], [], []
    for encoder, embedding in zip(parts.text_encoders, p.embeddings):
        unsplice(encoder)
        weight = encoder.get_input_embeddings().weight
        weight.requires_grad_(True)
        no_updates = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        no_updates[embedding.first_id:] = False
        weights.append(weight)
        originals.append(weight.detach().clone())
        frozen.append(no_updates)
    optimizer = s.optimizer.build(params=weights)
    rng = random.Random(0)
    templates = TEMPLATES[s.concept.learnable_property]
    bs, ga = s.train.batch_size, s.train.gradient_accumulation_steps
    pixels = p.images.pixels
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ends = []
    for _ in range(warmup + n):
        for _micro in range(ga):
            idx = [rng.randrange(len(pixels)) for _ in range(bs)]
            flips = [rng.random() < s.data.flip_p for _ in idx]
            images = torch.stack([pixels[i].flip(-1) if f else pixels[i] for i, f in zip(idx, flips)])
            prompts = [rng.choice(templates).format(s.concept.placeholder_string) for _ in idx]
            batch = {**parts.family.prompt_fields(parts.tokenizers, prompts),
                     **parts.family.image_fields(p.images.time_ids, torch.tensor(idx), torch.tensor(flips))}
            with accelerator.autocast():
                latents = vae.encode(images.to(device, dtype)).latent_dist.sample() * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                t = torch.randint(0, parts.noise_scheduler.config.num_train_timesteps, (bs,), device=device)
                hidden, added = text_conditioning(parts, parts.text_encoder, batch, dtype, device)
                loss = unet_losses(parts, latents, noise, t, hidden, added).mean() / ga
            loss.backward()
            optimizer.step()  # the example steps (and restores) every micro-step; Accelerate skips
            optimizer.zero_grad()  # the non-final ones, so here only the last one of each group steps
            with torch.no_grad():
                for weight, original, no_updates in zip(weights, originals, frozen):
                    weight[no_updates] = original[no_updates]
        sync()
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends[max(warmup - 1, 0):], ends[max(warmup, 1):])]


def time_evaluation(p, accelerator, trained) -> dict:
    """Seconds of one held-out-loss evaluation, the first (which also scores the initializer, once per
    run) and a later one; image metrics need the VAE decoder, which the timed run has let go."""
    from dataclasses import replace

    from .evaluation import Evaluator

    settings = p.settings.evaluation
    if settings is None or not settings.enabled:
        return {}
    evaluator = Evaluator(replace(settings, image_metrics=False), parts=p.parts, text_encoder=p.parts.text_encoder,
                          accelerator=accelerator, run_dir=p.run_dir, concept=p.settings.concept,
                          image_paths=p.images.paths, generator=None, images=p.images)
    train = p.settings.train
    evaluator.attach(trained.cache, trained.weight_dtype, items_per_step=train.batch_size
                     * train.gradient_accumulation_steps * accelerator.num_processes)
    if p.initializers:
        evaluator.use_initializer(p.initializers[0])
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        evaluator.score(0, images=False)
        seconds.append(time.perf_counter() - start)
    return {"evaluation_first_s": seconds[0], "evaluation_s": seconds[1], "evaluation_every": evaluator.every}


def _memory(device) -> dict:
    from .records.memory import peak_memory_bytes

    out = {"peak_rss_gib": peak_memory_bytes("cpu") / 2**30}
    if device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return out


def _import_libraries() -> None:
    """What every run imports before it can load a model (timed as one part of the start)."""
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401


def _bench_config(overrides: list[str], max_steps: int):
    """The experiment's settings for a timed run (default concept: demo) in a fresh temporary folder: no
    checkpoints, validation or tracker; returns them, the folder and the resolved config."""
    from omegaconf import OmegaConf

    from .config.checks import check_config

    if not any(o.startswith("+concept=") for o in overrides):
        overrides = ["+concept=demo", *overrides]
    forced = [f"train.max_steps={max_steps}", "train.checkpointing_steps=null",
              "train.resume_from_checkpoint=null", "validation.enabled=false", "logger=none"]
    run_dir = Path(tempfile.mkdtemp(prefix="ti-bench-"))
    cfg = compose([*overrides, *forced, f"paths.output_dir={run_dir}"])
    return check_config(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True)


def _step_seconds(times: StepTimes, result, warmup: int) -> tuple[float, list[float]]:
    """The latent cache's encoding before step 1's end, and each timed step's seconds without the cache's
    encoding in it (once per run: the rest of the images are encoded right after step 1, inside the next
    step's interval)."""
    encoded = result.trained_with.cache.encoded_at
    encoding = sum(seconds for end, seconds in encoded if end <= times.ends[0])
    step_seconds = [b - a - sum(s for end, s in encoded if a < end <= b)
                    for a, b in zip(times.ends[max(warmup - 1, 0):], times.ends[max(warmup, 1):])]
    if not step_seconds:
        step_seconds = [times.ends[-1] - times.ends[-2]] if len(times.ends) > 1 else [result.seconds]
    return encoding, step_seconds


def _startup_parts(marks: dict, encoding: float, first_end_wall: float) -> dict:
    """Seconds from the process's launch to the end of step 1, part by part."""
    names = list(marks)
    startup = {b: marks[b] - marks[a] for a, b in zip(names, names[1:])}
    return {"imports (python, torch, this package)": startup.pop("imports"),
            "imports (diffusers, transformers, accelerate)": startup.pop("libraries"), **startup,
            "latent cache (step 1's images)": encoding,
            # the loop's set-up (placement, optimizer, data) and step 1's compute
            "first step": first_end_wall - marks["UNet"] - encoding}


def benchmark(overrides: list[str], warmup: int, steps: int, phase_steps: int, reference: bool = False) -> dict:
    from .experiment import fit, make_accelerator, prepare, reset_accelerate
    from .records.memory import peak_memory_bytes

    started = _process_start()
    marks = {"launch": started, "imports": time.time()}
    _import_libraries()
    marks["libraries"] = time.time()
    settings, run_dir, config = _bench_config(overrides, warmup + steps)
    marks["config"] = time.time()
    p = prepare(settings, run_dir, config)
    marks["text encoder, VAE, images"] = time.time()
    accelerator = make_accelerator(settings.hardware, settings.logger, run_dir)
    try:
        Placement.of(accelerator, settings.hardware).load_unet(p.parts)  # as the run does when training starts
        marks["UNet"] = time.time()
        loaded_peak = peak_memory_bytes("cpu") / 2**30
        times = StepTimes()
        result = fit(p, accelerator, lambda start_step: times)
        encoding, step_seconds = _step_seconds(times, result, warmup)
        phases = time_phases(p, result.trained_with, accelerator, phase_steps)
        device = accelerator.device
        memory = _memory(device)  # training's peak: before the evaluation and the reference step
        evaluation = time_evaluation(p, accelerator, result.trained_with)
        if evaluation:
            evaluation["peak_rss_with_evaluation_gib"] = _memory(device)["peak_rss_gib"]
        reference_steps = time_reference(p, accelerator, steps, warmup) if reference else None
    finally:
        reset_accelerate()
    startup = _startup_parts(marks, encoding, times.first_end_wall)
    median_step = statistics.median(step_seconds)
    phase_medians = {name: statistics.median(r[name] for r in phases) for name in PHASES}
    unavoidable = statistics.median(sum(r[n] for n in UNAVOIDABLE) for r in phases)
    train, hardware = settings.train, settings.hardware
    batch = train.batch_size * train.gradient_accumulation_steps
    phase_medians["other"] = max(0.0, median_step - sum(phase_medians.values()))
    return {
        "model": p.parts.source, "resolution": settings.data.resolution, "batch_size": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "mixed_precision": hardware.mixed_precision, "gradient_checkpointing": hardware.gradient_checkpointing,
        "device": str(device), "threads": torch.get_num_threads(),
        "warmup_steps": warmup, "timed_steps": len(step_seconds), "phase_steps": phase_steps,
        "median_step_s": median_step, "images_per_s": batch / median_step,
        "step_s": step_seconds,
        "time_to_first_step_s": times.first_end_wall - started,
        "time_to_first_step_parts_s": startup,
        "phases_s": phase_medians,
        "unavoidable_s": unavoidable,
        "limit_ratio": median_step / unavoidable,
        "peak_rss_after_load_gib": loaded_peak,
        **evaluation,
        # what the held-out loss adds to training, evaluated every evaluation.steps optimizer steps
        **({"evaluation_share": evaluation["evaluation_s"] / (evaluation["evaluation_every"] * median_step)}
           if evaluation.get("evaluation_every") else {}),
        **memory,
        **({"reference_median_step_s": statistics.median(reference_steps),
            "reference_step_s": reference_steps,
            "speedup_vs_reference": statistics.median(reference_steps) / median_step} if reference_steps else {}),
    }


def table(r: dict) -> str:
    lines = [f"model {r['model']}, {r['resolution']} px, batch {r['batch_size']} x accumulation "
             f"{r['gradient_accumulation_steps']}, precision {r['mixed_precision']}, gradient checkpointing "
             f"{r['gradient_checkpointing']}, {r['device']} ({r['threads']} threads)",
             f"{'median s / optimizer step':<34}{r['median_step_s']:.3f}   ({r['timed_steps']} steps after "
             f"{r['warmup_steps']} warm-up; the latent cache's one-time encoding left out)",
             f"{'images / s':<34}{r['images_per_s']:.3f}",
             f"{'time to first step s':<34}{r['time_to_first_step_s']:.2f}   (from the process's start)"]
    for name, seconds in r["time_to_first_step_parts_s"].items():
        lines.append(f"  {name:<46}{seconds:6.2f}")
    if r.get("evaluation_every"):
        lines.append(f"  (no evaluation before step 1: the first is at step {r['evaluation_every']})")
    lines += [f"{'peak RSS GiB after loading':<34}{r['peak_rss_after_load_gib']:.2f}",
              f"{'peak RSS GiB (training)':<34}{r['peak_rss_gib']:.2f}"]
    if "peak_allocated_gib" in r:
        lines.append(f"{'peak GPU allocated / reserved GiB':<34}{r['peak_allocated_gib']:.2f} / "
                     f"{r['peak_reserved_gib']:.2f}")
    lines.append(f"phases (median of {r['phase_steps']} micro-steps timed one phase at a time):")
    for name, seconds in r["phases_s"].items():
        mark = " *" if name in UNAVOIDABLE else ""
        lines.append(f"  {name:<32}{seconds:.3f}  {100 * seconds / r['median_step_s']:5.1f}%{mark}")
    lines.append(f"{'unavoidable work (*) s':<34}{r['unavoidable_s']:.3f}")
    lines.append(f"{'limit ratio (step / unavoidable)':<34}{r['limit_ratio']:.3f}")
    if "evaluation_s" in r:
        every = r.get("evaluation_every")
        share = f", {100 * r['evaluation_share']:.1f}% of {every} steps" if every else ""
        lines.append(f"{'held-out loss evaluation s':<34}{r['evaluation_s']:.3f}   (first, with the "
                     f"initializer's: {r['evaluation_first_s']:.3f}{share})")
        lines.append(f"{'peak RSS GiB with evaluation':<34}{r['peak_rss_with_evaluation_gib']:.2f}")
    if "reference_median_step_s" in r:
        lines.append(f"{'example-style step s (same run)':<34}{r['reference_median_step_s']:.3f}")
        lines.append(f"{'speed-up vs example-style step':<34}{r['speedup_vs_reference']:.2f}x")
    return "\n".join(lines)


# A progress line of a training command: this project's log line "step N/M" or the diffusers example's
# progress bar "Steps: ... | N/M ["
STEP_LINE = re.compile(rb"(?:\] - step |Steps: *\d+%\|[^|\n]*\| *)(\d+)/\d+\b")


def _peak_rss_so_far(pid: int) -> float | None:
    """The process's peak resident memory until now (Linux's VmHWM), GiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def time_launch(command: list[str]) -> dict:
    """Run a training command as a user would and time it from the outside: launch to the end of its first
    optimizer step (its first progress line with step 1), to its last step, and to its exit; its peak RSS
    until the last step and over the whole run. The same measure for this project's CLI and the
    diffusers example."""
    import os
    import subprocess

    if not command:
        raise TIError("--launch needs a command", "put the command after --launch, e.g. --launch python -m "
                      "ti_experiments +concept=demo train.max_steps=4")
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise TIError(f"could not start {command[0]!r}: {exc.strerror}", "check the command after --launch") from None
    out: dict = {"command": " ".join(command)}
    buffer, last_step = b"", 0
    while chunk := os.read(proc.stdout.fileno(), 65536):
        sys.stderr.buffer.write(chunk)
        buffer = (buffer + chunk)[-4096:]
        steps = [int(m.group(1)) for m in STEP_LINE.finditer(buffer.replace(b"\r", b"\n"))]
        if steps:
            now = time.perf_counter() - started
            out.setdefault("first_step_s", now)
            out["last_line_s"] = now  # a sweep's jobs each count from 1 again: the last step line of all
            buffer = b""
        if steps and max(steps) > last_step:
            last_step = max(steps)
            out.update(last_step=last_step, last_step_s=now, peak_rss_until_last_step_gib=_peak_rss_so_far(proc.pid))
    _, status, usage = os.wait4(proc.pid, 0)
    out.update(exit_code=os.waitstatus_to_exitcode(status), wall_s=time.perf_counter() - started,
               peak_rss_gib=usage.ru_maxrss / 2**20)
    if "first_step_s" not in out:
        raise TIError(f"{command[0]!r} printed no step line (exit code {out['exit_code']})",
                      "run a training command that logs its steps (this project's CLI or the diffusers example)")
    return out


def launch_table(r: dict) -> str:
    return "\n".join([f"command: {r['command']}",
                      f"{'launch to the end of step 1 s':<40}{r['first_step_s']:.2f}",
                      f"{'launch to the end of step ' + str(r['last_step']) + ' s':<40}{r['last_step_s']:.2f}",
                      f"{'wall s (to exit)':<40}{r['wall_s']:.2f}   exit code {r['exit_code']}",
                      f"{'peak RSS GiB until the last step':<40}{r['peak_rss_until_last_step_gib'] or 0:.2f}",
                      f"{'peak RSS GiB (whole run)':<40}{r['peak_rss_gib']:.2f}"])


SWEEP_LAUNCHERS = ("basic", "parallel", "packed")


def time_sweep(jobs: int, launchers: list[str], overrides: list[str]) -> dict:
    """The same sweep of `jobs` seeds (`seed=0,...`) through each launcher, one after the other, timed from
    the outside as users run it; and one job alone, for memory and seconds per job-step."""
    import shutil

    unknown = sorted(set(launchers) - set(SWEEP_LAUNCHERS))
    if jobs < 1 or unknown:
        raise TIError(f"--sweep {jobs} with launchers {','.join(launchers)}",
                      f"use --sweep 4 and --launchers from {','.join(SWEEP_LAUNCHERS)}")
    overrides = overrides or ["+concept=demo"]
    root = Path(tempfile.mkdtemp(prefix="ti-sweep-bench-"))
    rows = {}
    try:
        for name, count, launcher in [("alone", 1, "basic"), *((f"{lr} x{jobs}", jobs, lr) for lr in launchers)]:
            seeds = ",".join(str(i) for i in range(count))
            command = [sys.executable, "-m", "ti_experiments", "-m", *overrides, f"seed={seeds}",
                       f"hydra/launcher={launcher}", f"hydra.sweep.dir={root / name.replace(' ', '')}"]
            r = time_launch(command)
            # from the sweep's first step line to its last, per job-step after each job's first (whatever
            # runs between them counts: evaluation, and in a sequential sweep the later jobs' starts)
            steps = max(count * (r["last_step"] - 1), 1)
            rows[name] = {"jobs": count, "launcher": launcher, "wall_s": r["wall_s"], "exit_code": r["exit_code"],
                          "peak_rss_gib": r["peak_rss_gib"],
                          "s_per_job_step": (r["last_line_s"] - r["first_step_s"]) / steps}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    basic = rows.get(f"basic x{jobs}")
    for row in rows.values():
        row["wall_vs_basic"] = row["wall_s"] / basic["wall_s"] if basic else None
    return {"overrides": overrides, "jobs": jobs, "rows": rows}


def sweep_table(r: dict) -> str:
    lines = [f"the same {r['jobs']}-job sweep (seed=0..{r['jobs'] - 1}) per launcher: {' '.join(r['overrides'])}",
             f"{'':<16}{'wall s':>10}{'x basic':>9}{'s/job-step':>12}{'peak RSS GiB':>14}  exit"]
    for name, row in r["rows"].items():
        ratio = f"{row['wall_vs_basic']:.2f}" if row["wall_vs_basic"] is not None and row["jobs"] > 1 else "-"
        lines.append(f"{name:<16}{row['wall_s']:>10.1f}{ratio:>9}{row['s_per_job_step']:>12.3f}"
                     f"{row['peak_rss_gib']:>14.2f}  {row['exit_code']}")
    return "\n".join(lines)


EXAMPLES = (
    ("python -m ti_experiments.bench +concept=demo", "the toy world's step, phase by phase"),
    ("python -m ti_experiments.bench +concept=demo model=sd15 model.random_init=true data.resolution=256",
     "SD 1.5's shapes with random weights, offline"),
    ("python -m ti_experiments.bench --sweep 4 +concept=demo", "one 4-job sweep with each launcher"),
)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = ArgumentParser(prog="python -m ti_experiments.bench", usage="%(prog)s [options] [overrides...]",
                            examples=EXAMPLES)
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps not timed (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps timed (default 5)")
    parser.add_argument("--phase-steps", type=int, default=3, help="steps timed phase by phase (default 3)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the diffusers example's way of computing the same step, in this run")
    parser.add_argument("--launch", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="instead: run COMMAND (a training command: this project's CLI or the diffusers "
                             "example) and time it from launch to its first step; its peak RSS")
    parser.add_argument("--sweep", type=int, metavar="N",
                        help="instead: run the same N-job sweep (seed=0..N-1) with each launcher, and one job "
                             "alone; wall time, seconds per job-step and peak RSS side by side")
    parser.add_argument("--launchers", default=",".join(SWEEP_LAUNCHERS),
                        help=f"with --sweep: which launchers (default {','.join(SWEEP_LAUNCHERS)})")
    args, overrides = parser.parse_known_args(argv)

    try:
        if args.sweep is not None:
            result = time_sweep(args.sweep, args.launchers.split(","), overrides)
            print(sweep_table(result))
        elif args.launch is not None:
            result = time_launch(args.launch)
            print(launch_table(result))
        else:
            result = benchmark(overrides, args.warmup, args.steps, args.phase_steps, args.reference)
            print(table(result))
    except Exception as exc:
        return report_or_raise(exc)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
