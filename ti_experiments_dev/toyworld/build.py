"""The pretraining stages put together: what each trains, in which order, and what is shipped at the end."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from ti_experiments.records.files import atomic_dir, write_text_atomic
from ti_experiments.toyworld.judge import AttributeClassifier

from . import architecture, pretraining

log = logging.getLogger(__name__)

STAGES = ("vae", "generator", "judge", "classifier")


def _settings(section) -> pretraining.StageSettings:
    fields = pretraining.StageSettings.__dataclass_fields__
    values = {k: v for k, v in section.items() if k in fields}
    values["restarts"] = tuple(int(r) for r in values.get("restarts") or ())
    return pretraining.StageSettings(**values)


def _stage(name: str, work: Path, modules: dict, cfg) -> pretraining.Stage:
    return pretraining.Stage(name, work, modules, _settings(cfg[name]), int(cfg.seed))


def _tokenizer(work: Path, name: str):
    """The tokenizer is a pure function of the word lists: rebuilt, not trained."""
    from transformers import CLIPTokenizer

    folder = work / name
    if not (folder / "vocab.json").exists():
        with atomic_dir(folder) as tmp:
            architecture.write_tokenizer(tmp)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def train_vae(work: Path, cfg, seconds: float | None) -> bool:
    vae = architecture.vae(int(cfg.seed))
    stage = _stage("vae", work, {"vae": vae}, cfg)
    stage.run(pretraining.vae_step(vae, int(cfg.vae.batch_size), float(cfg.vae.kl_weight),
                                   float(cfg.vae.object_weight)), seconds)
    if not stage.done:
        return False
    final = work / "vae" / "final"
    if not (final / "config.json").exists():
        vae.eval()
        vae.register_to_config(scaling_factor=pretraining.latent_scale(vae, int(cfg.seed)))
        psnr = reconstruction_psnr(vae, int(cfg.seed))
        with atomic_dir(final) as tmp:
            vae.save_pretrained(tmp)
            write_text_atomic(tmp / "quality.json", json.dumps({"psnr_db": psnr}))
        log.info("vae: scaling factor %.4f, reconstruction PSNR %.2f dB", vae.config.scaling_factor, psnr)
    return True


@torch.no_grad()
def reconstruction_psnr(vae, seed: int, count: int = 256) -> float:
    rng = pretraining.batch_rng(seed, "vae-check", 0)
    x, _ = pretraining.render_batch(pretraining.pretraining_batch(rng, count), rng)
    y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((y - x) / 2).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _frozen_vae(work: Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae" / "final")
    return vae.eval().requires_grad_(False)


def train_generator(work: Path, cfg, seconds: float | None) -> bool:
    from diffusers import DDPMScheduler

    seed = int(cfg.seed)
    tokenizer = _tokenizer(work, "tokenizer")
    text_encoder, unet = architecture.text_encoder(tokenizer, seed + 2), architecture.unet(seed + 3)
    stage = _stage("generator", work, {"text_encoder": text_encoder, "unet": unet}, cfg)
    scheduler = DDPMScheduler.from_config(architecture.scheduler_config())
    nicknames = pretraining.Nicknames(cfg.generator.nicknames_from, float(cfg.generator.nickname_share))
    stage.run(pretraining.generator_step(_frozen_vae(work), text_encoder, unet, tokenizer, scheduler,
                                         int(cfg.generator.batch_size), nicknames, seed), seconds)
    return stage.done


def train_judge(work: Path, cfg, seconds: float | None) -> bool:
    seed = int(cfg.seed)
    tokenizer = _tokenizer(work, "judge_tokenizer")
    judge = architecture.judge(tokenizer, seed + 10)
    heads = architecture.JudgeHeads(judge.config.vision_config.hidden_size)
    stage = _stage("judge", work, {"judge": judge, "heads": heads}, cfg)
    stage.run(pretraining.judge_step(judge, heads, tokenizer, int(cfg.judge.batch_size)), seconds)
    return stage.done


def train_classifier(work: Path, cfg, seconds: float | None) -> bool:
    classifier = AttributeClassifier()
    stage = _stage("classifier", work, {"classifier": classifier}, cfg)
    stage.run(pretraining.classifier_step(classifier, int(cfg.classifier.batch_size)), seconds)
    return stage.done


def ready(work: Path, cfg) -> bool:
    """Every stage has reached the steps the recipe asks of it."""
    def finished(name: str) -> bool:
        state = work / name / "checkpoint" / "state.json"
        return state.exists() and json.loads(state.read_text())["step"] >= int(cfg[name].steps)
    return all(finished(name) for name in STAGES)


def export(work: Path, ship: Path, recipe: dict) -> None:
    """The generator in SD 1.x's diffusers layout (UNet and VAE stored in fp16, text encoder in fp32:
    diffusers loads half weights into fp32 modules, transformers would keep them half), the judge (its
    CLIP, and the attribute classifier in fp16) beside it, and a manifest with every file's sha256,
    the recipe and the time each stage took. Half precision keeps all of it under 25 MB."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor

    seed = int(recipe["seed"])
    tokenizer = _tokenizer(work, "tokenizer")
    text_encoder, unet = architecture.text_encoder(tokenizer, seed + 2), architecture.unet(seed + 3)
    weights = load_file(str(work / "generator" / "checkpoint" / "weights.safetensors"))
    for key, module in (("text_encoder", text_encoder), ("unet", unet)):
        prefix = f"ema.{key}."
        module.load_state_dict({n[len(prefix):]: v for n, v in weights.items() if n.startswith(prefix)})
    vae = _frozen_vae(work)
    judge_tokenizer = _tokenizer(work, "judge_tokenizer")
    judge = architecture.judge(judge_tokenizer, seed + 10)
    weights = load_file(str(work / "judge" / "checkpoint" / "weights.safetensors"))
    judge.load_state_dict({n[6:]: v for n, v in weights.items() if n.startswith("judge.")})

    with atomic_dir(ship) as tmp:
        pipe = StableDiffusionPipeline(vae=vae.half(), text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=unet.half(), scheduler=DDIMScheduler.from_config(
                                           architecture.scheduler_config()),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(tmp / "model", safe_serialization=True)
        clip_dir = tmp / "judge" / "clip"
        judge.save_pretrained(clip_dir, safe_serialization=True)
        judge_tokenizer.save_pretrained(clip_dir)
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                       image_mean=[0.5] * 3, image_std=[0.5] * 3)
        processor.save_pretrained(clip_dir)
        processor.save_pretrained(tmp / "judge")  # the attribute classifier reads images the same way
        weights = load_file(str(work / "classifier" / "checkpoint" / "weights.safetensors"))
        save_file({n[len("classifier."):]: v.half() for n, v in weights.items() if n.startswith("classifier.")},
                  str(tmp / "judge" / "attributes.safetensors"))
        stages = {name: json.loads((work / name / "checkpoint" / "state.json").read_text())
                  for name in STAGES}
        files = {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            "stages": {k: {"steps": v["step"], "cpu_seconds": round(v["seconds"])} for k, v in stages.items()},
            "vae_quality": json.loads((work / "vae" / "final" / "quality.json").read_text()),
            "recipe": recipe,
            "sha256": files,
        }
        write_text_atomic(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
