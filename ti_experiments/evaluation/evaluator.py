"""Scores the embedding during training (and in `python -m ti_experiments.evaluate`).

At each evaluation step: the held-out loss (cheap, any machine; what the stopping rule watches), and,
at image-metric steps, CLIP-I / CLIP-T / DINO on images generated from the prompt set with the modules
being trained. The values join that step's row of metrics.jsonl (and the tracker); the kept step's go
to summary.json.
Only the main process evaluates; every random draw has its own seed or a forked RNG, so a run with
evaluation trains exactly the same embedding as one without.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .heldout import build_heldout_set, heldout_loss
from .prompts import prompt_templates
from .settings import IMAGE_METRICS, METRICS, EvaluationSettings

log = logging.getLogger(__name__)



class Evaluator:
    def __init__(self, settings: EvaluationSettings, *, parts, text_encoder, accelerator, run_dir: Path,
                 concept, image_paths: list[Path], generator, images=None):
        """`concept`: the concept's settings (`ConceptSettings`); `generator` makes the images (a `Validator`:
        same sampler, steps, guidance and seed); `images` (`ConceptImages`) gives the size and crop that some
        model families are conditioned on."""
        self.settings = settings
        self.parts = parts
        self.text_encoder = text_encoder
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.placeholder = concept.placeholder_token
        self.placeholder_string = concept.placeholder_string
        self.initializer = (concept.candidates or [""])[0]  # several, or auto: `use_initializer` names the one
        self.learnable_property = concept.learnable_property
        self.geometry = images.time_ids if images is not None else None
        self.generator = generator
        self.images_on = settings.images_on(accelerator.device)
        self.templates = (prompt_templates(settings.prompts, self.learnable_property, settings.num_prompts)
                          if self.images_on else [])
        self.scorer = None
        self.image_paths = list(image_paths)
        self.model_paths = None
        if self.images_on and accelerator.is_main_process:
            from .image_metrics import locate_models

            # found and checked now (a wrong name fails before training), loaded at the first image scores
            self.model_paths = locate_models(settings.clip_model, settings.dino_model)
        self.cache = None
        self.held = None
        self.weight_dtype = torch.float32
        self.max_steps = None
        self.every: int | None = settings.steps if settings.steps != "auto" else None  # set by attach
        self.init_loss: dict | None = None  # heldout_loss_init (and _words): scored once
        self.last: dict = {}
        self.scored: dict[int, dict] = {}  # step -> values, this process's evaluations

    @property
    def needs_vae(self) -> bool:
        return self.images_on

    def attach(self, cache, weight_dtype, max_steps: int | None = None, items_per_step: int = 1) -> None:
        """The latent cache to draw the held-out set from (at the first evaluation: nothing here delays
        step 1), and the cadence (`evaluation.steps=auto` follows the items per optimizer step)."""
        self.cache = cache
        self.weight_dtype = weight_dtype
        self.max_steps = max_steps
        self.every = self.settings.cadence(items_per_step)

    def use_initializer(self, word: str) -> None:
        """The initializer word the run starts from (chosen among candidates): heldout_loss_init scores it."""
        if word != self.initializer:
            self.initializer, self.held, self.init_loss = word, None, None

    def heldout_set(self):
        """Drawn from its own seed, so drawing it later draws the same set."""
        if self.held is None:
            s = self.settings
            self.held = build_heldout_set(self.cache, self.parts, self.placeholder_string, self.initializer,
                                          self.learnable_property, s.heldout_samples, s.heldout_seed, s.description,
                                          self.geometry)
        return self.held

    def due(self, step: int, max_steps: int) -> bool:
        s = self.settings
        images = self.images_on and s.due(s.image_steps, step, max_steps)
        return s.enabled and (s.due(self.every, step, max_steps) or images)

    def images_due(self, step: int) -> bool:
        return self.images_on and self.settings.due(self.settings.image_steps, step, self.max_steps or step)

    @torch.no_grad()
    def heldout(self, which: str = "learned") -> float:
        """The held-out loss of the embedding in the text encoder now (`which`: learned, init or words)."""
        unet = self.parts.unet
        encoders = [self.text_encoder, *self.parts.text_encoders[1:]]
        modes = (unet.training, [e.training for e in encoders])
        unet.eval()
        for encoder in encoders:
            encoder.eval()
        try:
            with self.accelerator.autocast():
                return heldout_loss(self.parts, self.text_encoder, self.heldout_set(), which, self.weight_dtype,
                                    self.accelerator.device, self.settings.heldout_batch_size)
        finally:
            unet.train(modes[0])
            for encoder, mode in zip(encoders, modes[1]):
                encoder.train(mode)

    def score(self, step: int, images: bool) -> dict:
        """The metrics of the embedding in the text encoder now."""
        values = {"heldout_loss": self.heldout()}
        if self.init_loss is None:  # these prompts do not change while training
            self.init_loss = {f"heldout_loss_{which}": self.heldout(which) for which in ("init", "words")
                              if which in self.heldout_set().prompts}
        values.update(self.init_loss)
        if images:
            values.update(self.image_scores())
        return values

    def image_scores(self) -> dict:
        s = self.settings
        prompts = [t.format(self.placeholder_string) for t in self.templates]
        subject = s.text_subject or self.initializer
        texts = [t.format(subject) for t in self.templates]
        if self.scorer is None:
            from ..data.images import _open_rgb
            from .image_metrics import EvalModels, ImageScorer

            models = EvalModels(*self.model_paths, self.accelerator.device)
            self.scorer = ImageScorer(models, [_open_rgb(p, 512)[0] for p in self.image_paths])
        generated = self.generator.generate(prompts, s.num_images, s.batch_size)
        flat = [img for imgs in generated for img in imgs]
        flat_texts = [text for text, imgs in zip(texts, generated) for _ in imgs]
        return self.scorer.score(flat, flat_texts)

    def __call__(self, step: int, images: bool | None = None) -> dict:
        """Score; return the values for this step's metrics row (main process; {} on the others)."""
        if not self.accelerator.is_main_process:
            return {}
        started = time.perf_counter()
        values = self.score(step, self.images_due(step) if images is None else images)
        values["eval_seconds"] = round(time.perf_counter() - started, 4)
        self.last.update(values)
        self.scored[step] = values
        log.info("evaluation at step %d: %s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k in METRICS))
        return values

    def summary(self, kept_step: int | None = None) -> dict:
        """For summary.json: each metric of the kept step (the one learned_embeds.safetensors holds), as
        scored at that step, else its last value (image metrics: `score_kept` scores the kept rows)."""
        values = {**self.last, **self.scored.get(kept_step, {})} if kept_step is not None else self.last
        return {k: values[k] for k in METRICS if k in values}

    def score_kept(self, kept_step: int) -> dict:
        """Image metrics of the embedding in the text encoder now (the kept rows, put back after training)
        when the kept step had none; {} when image metrics are off or it had them."""
        if not self.images_on or not self.accelerator.is_main_process:
            return {}
        if all(k in self.scored.get(kept_step, {}) for k in IMAGE_METRICS):
            return {}
        values = self.image_scores()
        self.scored.setdefault(kept_step, {}).update(values)
        log.info("image metrics of the kept step %d: %s", kept_step, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        return values


__all__ = ["Evaluator"]
