"""Validation images during training: the in-memory modules, a fixed seed, a fast multistep sampler.

Generation runs under a forked RNG, so turning validation on or off never changes what is trained.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TIError
from ..records.files import atomic_path
from ..records.run_dir import validation_dir
from ..config.settings import Settings, bound, node_values, seed_bound

log = logging.getLogger(__name__)


@dataclass
class ValidationSettings(Settings):
    """The `validation` config node (with the concept's prompt and the data's resolution filled in)."""

    GROUP = "validation"

    enabled: bool = True
    prompts: list[str] = bound(factory=list, example="['a photo of <cat-toy>']")
    # every N optimizer steps, and at the end (null: only at the end)
    steps: int | None = bound(100, minimum=1, example="100")
    num_images: int = bound(4, minimum=1, example="4")
    num_inference_steps: int = bound(25, minimum=1, example="25")
    guidance_scale: float = bound(7.5, minimum=0, example="7.5")
    seed: int = seed_bound()
    resolution: int = bound(512, minimum=1, example="512")

    def __post_init__(self):
        super().__post_init__()
        if self.enabled and not self.prompts:
            raise TIError("validation is on but has no prompt",
                          "set concept.validation_prompt or validation.prompts=[...], or validation.enabled=false")

    def due(self, step: int, max_steps: int) -> bool:
        return self.enabled and (step >= max_steps or bool(self.steps and step % self.steps == 0))


def make_settings(node, concept_prompt: str | None, resolution: int) -> ValidationSettings:
    """The node's settings; its prompts default to the concept's validation prompt."""
    values = node_values(node)
    if not values.get("prompts"):
        values["prompts"] = [concept_prompt] if concept_prompt else []
    return ValidationSettings.from_node({**values, "resolution": resolution})


class Validator:
    """Builds a pipeline around the modules being trained (no copy) and writes/logs its images."""

    def __init__(self, settings: ValidationSettings, parts, text_encoder, accelerator, tracker, run_dir: Path):
        self.settings = settings
        self.parts = parts
        self.text_encoder = text_encoder
        self.accelerator = accelerator
        self.tracker = tracker
        self.run_dir = Path(run_dir)

    def _pipeline(self):
        """The model family's pipeline over the modules being trained (no second copy of the model)."""
        from diffusers import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler.from_config(self.parts.noise_scheduler.config)
        pipe = self.parts.family.pipeline(self.parts, self._encoders(), scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _encoders(self) -> list:
        """The text encoders: the (possibly Accelerate-wrapped) first one given, then the parts' others."""
        return [self.text_encoder, *self.parts.text_encoders[1:]]

    @contextlib.contextmanager
    def _generating(self):
        """The pipeline, with the VAE on the device, eval modes and a forked RNG; all restored after."""
        device = self.accelerator.device
        vae_device = next(self.parts.vae.parameters()).device
        encoders = self._encoders()
        modes = (self.parts.unet.training, [e.training for e in encoders])
        self.parts.vae.to(device)
        self.parts.unet.eval()
        for encoder in encoders:
            encoder.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                    self.accelerator.autocast():
                pipe = self._pipeline()
                yield pipe
                del pipe
        finally:
            self.parts.vae.to(vae_device)
            self.parts.unet.train(modes[0])
            for encoder, mode in zip(encoders, modes[1]):
                encoder.train(mode)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _generate(self, pipe, prompt, num_images: int, generator):
        s = self.settings
        return pipe(prompt, num_images_per_prompt=num_images, height=s.resolution, width=s.resolution,
                    num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                    generator=generator).images

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, list]:
        """Generate, save as validation/step-N/PP-II.png, log to the tracker; main process only."""
        if not self.accelerator.is_main_process:
            return {}
        s = self.settings
        images: dict[str, list] = {}
        out_dir = validation_dir(self.run_dir, step)
        with self._generating() as pipe:
            for p, prompt in enumerate(s.prompts):
                generator = torch.Generator(device=self.accelerator.device).manual_seed(s.seed + p)
                images[prompt] = self._generate(pipe, prompt, s.num_images, generator)
                for i, image in enumerate(images[prompt]):
                    with atomic_path(out_dir / f"{p:02d}-{i:02d}.png") as tmp:
                        image.save(tmp, format="PNG")
        self.tracker.log_images(self.accelerator, step, images)
        log.info("validation images for step %d in %s", step, out_dir)
        return images

    @torch.no_grad()
    def generate(self, prompts: list[str], num_images: int, batch_size: int) -> list[list]:
        """`num_images` images per prompt, `batch_size` at a time (evaluation). Image i of prompt p comes
        from its own seed (validation seed, p, i), so the batching never changes an image."""
        device = self.accelerator.device
        jobs = [(p, i) for p in range(len(prompts)) for i in range(num_images)]
        out: list[list] = [[] for _ in prompts]
        with self._generating() as pipe:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start:start + batch_size]
                generators = [torch.Generator(device=device).manual_seed(self.settings.seed + 1000 * p + i)
                              for p, i in chunk]
                images = self._generate(pipe, [prompts[p] for p, _ in chunk], 1, generators)
                for (p, _), image in zip(chunk, images):
                    out[p].append(image)
        return out
