"""`python -m ti_experiments_dev.quality [judge] [model] [ti] [--out DIR]`: the toy world's figures.

- judge: the judge's accuracy per attribute on fresh renders;
- model: the shipped model's images for 200 captions pretraining never saw, judged per attribute, next
  to the judge's accuracy on the VAE's reconstructions of the same scenes (the ceiling);
- ti: textual inversion on every named concept with the demo's settings, 1 and 4 vectors: the held-out
  loss of the learned token, the initializer word and the concept's description in words; the judge's
  CLIP-I of "a photo of a <token>" images against the real images (and of the initializer's, of the
  description's in words, which is what the model can draw of the concept at best, and of the real images
  among themselves); CLIP-T of prompts in new contexts against real renders of them. CLIP-T's
  text names the concept by its description (real CLIP knows "a toy" in any colour; the judge has only
  ever read complete descriptions, so the initializer word alone is outside what it can read).

Everything is loaded from folders as a user would (the shipped weights, the run directories).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
import random
import sys
from pathlib import Path

import numpy as np
import torch

from ti_experiments.errors import ArgumentParser
from ti_experiments.toyworld import shipped, world
from ti_experiments.toyworld.judge import Judge

GUIDANCE = 4.0
STEPS = 25


def judge_figures(judge: Judge, count: int = 1000, seed: int = 0) -> dict[str, float]:
    rng = random.Random(f"judge-check-{seed}")
    scenes = [world.draw_scene(rng) for _ in range(count)]
    return judge.accuracy([world.render(s, rng)[0] for s in scenes], scenes)


def _pipeline(weights: Path):
    from ti_experiments.models.loading import load_pipeline

    pipe = load_pipeline(str(weights / "model"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], seed: int = 0, guidance: float = GUIDANCE, batch_size: int = 50) -> list:
    images = []
    for start in range(0, len(prompts), batch_size):
        gen = torch.Generator().manual_seed(seed + start)
        images += pipe(prompts[start:start + batch_size], num_inference_steps=STEPS, guidance_scale=guidance,
                       height=world.SIZE_PX, width=world.SIZE_PX, generator=gen).images
    return images


@torch.no_grad()
def model_figures(judge: Judge, pipe, count: int = 200, seed: int = 0, guidance: float = GUIDANCE) -> dict:
    scenes = world.test_scenes(count, seed)
    generated = generate(pipe, [world.caption(s) for s in scenes], seed, guidance)
    rng = random.Random(f"model-check-{seed}")
    real = [world.render(s, rng)[0] for s in scenes]
    x = judge.pixels(real)
    decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    recon = [_to_image(t) for t in decoded]
    return {"generated": judge.accuracy(generated, scenes), "vae_ceiling": judge.accuracy(recon, scenes),
            "images": generated}


def _to_image(t: torch.Tensor):
    from PIL import Image

    return Image.fromarray(((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))


def _demo_train_settings() -> list[str]:
    """The demo preset's training settings, read from its config (one owner): applied to every concept."""
    from ti_experiments.api import compose

    train = compose(["+concept=demo"]).train
    return [f"train.{k}={train[k]}" for k in ("max_steps", "batch_size", "save_steps", "checkpointing_steps")]


def _concept_config(name: str):
    """The concept's preset (its token and initializer word are the preset's, as a user runs it)."""
    from ti_experiments.api import compose

    return compose([f"+concept={name}"]).concept


def ti_figures(pipe, weights: Path, concepts: list[str], num_vectors: list[int], out: Path, seed: int = 0,
               images: int = 16) -> list:
    from ti_experiments.api import train
    from ti_experiments.evaluation.image_metrics import EvalModels, ImageScorer

    models = EvalModels(str(weights / "judge" / "clip"), str(weights / "judge"), "cpu")
    where = [f"model.pretrained_model_name_or_path={weights / 'model'}",
             f"evaluation.clip_model={weights / 'judge' / 'clip'}", f"evaluation.dino_model={weights / 'judge'}"]
    settings = _demo_train_settings()
    runs = out / f"runs-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"  # a run folder holds one run: new ones each time
    rows = []
    for name in concepts:
        concept = world.CONCEPTS[name]
        rng = random.Random(f"ti-check-{name}")
        real = [world.render(s, rng)[0] for s in concept.scenes(6, seed)]
        scorer = ImageScorer(models, real)
        real_clip = scorer.real_clip
        n = len(real)
        among = float(((real_clip @ real_clip.T).sum() - n) / (n * (n - 1)))
        preset = _concept_config(name)
        init_prompt = f"a photo of a {preset.initializer_token}"
        init_clip_i = scorer.score(generate(pipe, [init_prompt] * images, seed), [init_prompt] * images)["clip_i"]
        words_prompt = f"a photo of a {concept.description()}"
        words_clip_i = scorer.score(generate(pipe, [words_prompt] * images, seed), [words_prompt] * images)["clip_i"]
        contexts = list(world.CONTEXTS)
        texts = [c.format(concept.description()) for c in contexts]
        in_context = [world.render(dataclasses.replace(s, **world.CONTEXTS[c]), rng)[0]
                      for c in contexts for s in concept.scenes(4, seed + 1)]
        real_clip_t = scorer.score(in_context, [t for t in texts for _ in range(4)])["clip_t"]
        for k in num_vectors:
            run_dir = runs / f"{name}-nv{k}"
            # the preset's word starts (no proposed words): the "init" columns are that word's
            result = train(f"+concept={name}", "model=toyworld", "logger=none", "validation.enabled=false",
                           "evaluation.initializer_proposals=0",
                           f"concept.num_vectors={k}", f"evaluation.description='{concept.description()}'",
                           f"evaluation.text_subject='{concept.description()}'",
                           f"seed={seed}", *settings, *where, output_dir=run_dir)
            token = str(preset.placeholder_token)
            pipe.load_textual_inversion(str(run_dir), token=token)
            try:
                prompt = f"a photo of a {token}"
                learned = scorer.score(generate(pipe, [prompt] * images, seed), [prompt] * images)["clip_i"]
                ctx = generate(pipe, [c.format(token) for c in contexts for _ in range(4)], seed)
                clip_t = scorer.score(ctx, [t for t in texts for _ in range(4)])["clip_t"]
            finally:
                pipe.unload_textual_inversion()
            s = result.summary
            init, words, loss = s["heldout_loss_init"], s["heldout_loss_words"], s["heldout_loss"]
            rows.append({
                "concept": name, "num_vectors": k, "heldout_loss": loss, "heldout_loss_init": init,
                "heldout_loss_words": words, "below_init": 1 - loss / init,
                "gap_closed": (init - loss) / (init - words) if init != words else float("nan"),
                "words_below_init": 1 - words / init,
                "clip_i": learned, "clip_i_init": init_clip_i, "clip_i_words": words_clip_i, "clip_i_real": among,
                "clip_i_ratio": learned / among,
                "clip_t": clip_t, "clip_t_real": real_clip_t, "clip_t_ratio": clip_t / real_clip_t,
                "run_dir": str(run_dir),
            })
    return rows


def _table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ti_experiments_dev.quality", description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", help="judge, model and/or ti (default: all three)")
    parser.add_argument("--out", default="outputs/toyworld-quality", help="where runs, images and quality.json go")
    parser.add_argument("--concepts", default=",".join(world.CONCEPTS))
    parser.add_argument("--num-vectors", default="1,4")
    parser.add_argument("--guidance", type=float, default=GUIDANCE)
    parser.add_argument("--images", type=int, default=16, help="images per prompt for CLIP-I (more: less sampling noise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=shipped.WEIGHTS_DIR,
                        help="a folder with model/ and judge/ (default: the shipped weights)")
    args = parser.parse_args(argv)
    args.parts = args.parts or ["judge", "model", "ti"]
    if set(args.parts) - {"judge", "model", "ti"}:
        parser.error(f"unknown part(s) {', '.join(sorted(set(args.parts) - {'judge', 'model', 'ti'}))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    judge = Judge(args.weights / "judge")
    figures: dict = {}
    if "judge" in args.parts:
        figures["judge_accuracy"] = judge_figures(judge, seed=args.seed)
        print("judge accuracy on 1000 fresh renders:", json.dumps({k: round(v, 3) for k, v in
                                                                   figures["judge_accuracy"].items()}))
    pipe = _pipeline(args.weights) if {"model", "ti"} & set(args.parts) else None
    if "model" in args.parts:
        m = model_figures(judge, pipe, seed=args.seed, guidance=args.guidance)
        _grid(m.pop("images")[:100], out / "model_samples.png")
        figures["model"] = m
        print(f"model, 200 unseen captions, {STEPS} DDIM steps, guidance {args.guidance}:")
        print(_table([{"images": k, **{a: v for a, v in m[k].items()}} for k in ("generated", "vae_ceiling")],
                     ["images"] + list(world.ATTRIBUTES)))
    if "ti" in args.parts:
        rows = ti_figures(pipe, args.weights, args.concepts.split(","), [int(k) for k in args.num_vectors.split(",")],
                          out / "runs", seed=args.seed, images=args.images)
        figures["ti"] = rows
        print("textual inversion, the demo's settings:")
        print(_table(rows, ["concept", "num_vectors", "heldout_loss", "heldout_loss_init", "heldout_loss_words",
                            "below_init", "gap_closed", "words_below_init"]))
        print(_table(rows, ["concept", "num_vectors", "clip_i", "clip_i_init", "clip_i_words", "clip_i_real", "clip_i_ratio",
                            "clip_t", "clip_t_real", "clip_t_ratio"]))
    (out / "quality.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures in {out / 'quality.json'}")
    return 0


def _grid(images: list, path: Path, per_row: int = 20) -> None:
    from PIL import Image

    rows = (len(images) + per_row - 1) // per_row
    grid = Image.new("RGB", (per_row * world.SIZE_PX, rows * world.SIZE_PX))
    for i, im in enumerate(images):
        grid.paste(im, ((i % per_row) * world.SIZE_PX, (i // per_row) * world.SIZE_PX))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)


if __name__ == "__main__":
    sys.exit(main())
