"""Scores the embedding during training (and in `python -m ti_experiments.evaluate`), keeps the best one.

At each evaluation step: the held-out loss (cheap, any machine), and, at image-metric steps, CLIP-I /
CLIP-T / DINO on images generated from the prompt set with the modules being trained. The values join
that step's row of metrics.jsonl (and the tracker); the last ones and the best step go to summary.json.
Only the main process evaluates; every random draw has its own seed or a forked RNG, so a run with
evaluation trains exactly the same embedding as one without.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from ..models.embeddings import save_learned_embeds
from ..records.run_dir import BEST_EMBEDDING, read_metrics
from .heldout import build_heldout_set, heldout_loss
from .prompts import prompt_templates
from .settings import METRICS, EvaluationSettings, direction

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
        self.initializer = concept.initializer_token
        self.learnable_property = concept.learnable_property
        self.geometry = images.time_ids if images is not None else None
        self.generator = generator
        self.images_on = settings.images_on(accelerator.device)
        self.best_metric = settings.best(self.images_on)
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
        self.init_loss: dict | None = None  # heldout_loss_init (and _words): scored once
        self.last: dict = {}
        self.best: tuple[int, float] | None = None

    @property
    def needs_vae(self) -> bool:
        return self.images_on

    def attach(self, cache, weight_dtype, start_step: int = 0, max_steps: int | None = None) -> None:
        """The latent cache to draw the held-out set from (at the first evaluation: nothing here delays
        step 1); a resumed run takes its best step so far from metrics.jsonl."""
        self.cache = cache
        self.weight_dtype = weight_dtype
        self.max_steps = max_steps
        if start_step > 0:
            for row in read_metrics(self.run_dir):
                if row.get("step", 0) <= start_step and row.get(self.best_metric) is not None:
                    self._keep_if_best(row["step"], row[self.best_metric], None)

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
        return s.enabled and (s.due(s.steps, step, max_steps) or images)

    def images_due(self, step: int) -> bool:
        return self.images_on and self.settings.due(self.settings.image_steps, step, self.max_steps or step)

    @torch.no_grad()
    def score(self, step: int, images: bool) -> dict:
        """The metrics of the embedding in the text encoder now."""
        device = self.accelerator.device
        unet = self.parts.unet
        encoders = [self.text_encoder, *self.parts.text_encoders[1:]]
        modes = (unet.training, [e.training for e in encoders])
        unet.eval()
        for encoder in encoders:
            encoder.eval()
        try:
            with self.accelerator.autocast():
                args = (self.parts, self.text_encoder, self.heldout_set())
                values = {"heldout_loss": heldout_loss(*args, "learned", self.weight_dtype, device,
                                                       self.settings.heldout_batch_size)}
                if self.init_loss is None:  # these prompts do not change while training
                    self.init_loss = {f"heldout_loss_{which}": heldout_loss(*args, which, self.weight_dtype, device,
                                                                            self.settings.heldout_batch_size)
                                      for which in ("init", "words") if which in args[2].prompts}
                values.update(self.init_loss)
        finally:
            unet.train(modes[0])
            for encoder, mode in zip(encoders, modes[1]):
                encoder.train(mode)
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

    def __call__(self, step: int, vectors: torch.Tensor, images: bool | None = None) -> dict:
        """Score, keep the best embedding, return the values for this step's metrics row (main process)."""
        if not self.accelerator.is_main_process:
            return {}
        started = time.perf_counter()
        values = self.score(step, self.images_due(step) if images is None else images)
        values["eval_seconds"] = round(time.perf_counter() - started, 4)
        self.last.update(values)
        if self.best_metric in values:
            self._keep_if_best(step, values[self.best_metric], vectors)
        log.info("evaluation at step %d: %s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k in METRICS))
        return values

    def _keep_if_best(self, step: int, value: float, vectors: torch.Tensor | None) -> None:
        if not math.isfinite(value):
            return
        if self.best is not None:
            better = value > self.best[1] if direction(self.best_metric) == "maximize" else value < self.best[1]
            if not better:
                return
        self.best = (step, value)
        if vectors is not None:
            save_learned_embeds(self.run_dir / BEST_EMBEDDING, self.placeholder, vectors)

    def summary(self) -> dict:
        """For summary.json: the last value of each metric, and which step was best by which metric."""
        out = {k: self.last[k] for k in METRICS if k in self.last}
        out["best_metric"] = self.best_metric
        if self.best is not None:
            out["best_step"] = self.best[0]
            out[f"best_{self.best_metric}"] = self.best[1]
        return out


__all__ = ["Evaluator"]
