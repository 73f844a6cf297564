"""The seam between the project and a model family (SD 1.x/2.x, SDXL, later others).

Everything that differs between families lives behind `ModelFamily`, one module per family (`sd.py`,
`sdxl.py`); the loop, the dataset, evaluation, validation, generation, export and the packed launcher
loop over `parts.tokenizers` / `parts.text_encoders` and call these methods, never asking which family
they hold. `loading.FAMILIES` lists the families a model folder is recognised as.

A new family provides, in one module:
- `name`, `label`, `pipeline_class` and `component_folders` (tokenizer and text-encoder subfolders,
  one pair per encoder whose placeholder rows are trained),
- `recognises(components)`: whether a folder's model_index.json describes this family,
- `load_text_parts(...)`: its tokenizers and text encoders,
- `prompt_fields(...)` and `image_fields(...)`: a training item's model inputs (token ids per tokenizer,
  any per-image conditioning such as SDXL's time ids),
- `conditioning(...)`: what the UNet is conditioned on for a batch of those fields,
- `pipeline(...)`: a diffusers pipeline over the modules being trained (validation, image metrics),
- `vae_dtype(...)`: the dtype its VAE encodes in,
- `a1111_tensors(...)`: the keys of its A1111/ComfyUI file (the diffusers format is one file per encoder,
  named by `run_dir.EMBEDDINGS`, whatever the family).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


class ModelFamily:
    """One family's answers; subclasses are stateless and compare equal by name."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    pipeline_class: ClassVar[str] = ""
    # (tokenizer subfolder, text encoder subfolder) of each encoder whose placeholder rows train
    component_folders: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelFamily) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<{self.label} family>"

    @property
    def num_encoders(self) -> int:
        return len(self.component_folders)

    def recognises(self, components: dict) -> bool:
        raise NotImplementedError

    def load_text_parts(self, source: str, common: dict, weights: dict) -> tuple[list, list]:
        raise NotImplementedError

    def prompt_fields(self, tokenizers: list, texts: str | list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def image_fields(self, geometry: torch.Tensor | None, index, flipped) -> dict[str, torch.Tensor]:
        return {}

    def conditioning(self, text_encoders: list, batch: dict, weight_dtype, device) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def pipeline(self, parts, text_encoders: list, scheduler):
        raise NotImplementedError

    def vae_dtype(self, vae, weight_dtype: torch.dtype) -> torch.dtype:
        return weight_dtype

    def a1111_tensors(self, vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def item_fields(self, tokenizers: list, geometry: torch.Tensor | None = None) -> ItemFields:
        """What the dataset adds to each item: the prompt's token ids and the image's conditioning."""
        return ItemFields(self, list(tokenizers), geometry)


def present(components: dict, name: str) -> bool:
    """Whether model_index.json's components (`name: [library, class]`, null where absent) include `name`."""
    value = components.get(name)
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(v is not None for v in values)


def tokenize(tokenizer, texts: str | list[str]) -> torch.Tensor:
    """[N, max_length] token ids (N = 1 for one text), padded and truncated as every Stable Diffusion
    pipeline does."""
    return tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


@dataclass
class ItemFields:
    """A training item's model inputs (picklable, for data-loader workers)."""

    family: ModelFamily
    tokenizers: list
    geometry: torch.Tensor | None = None  # [2 (as is, mirrored), N images, 6]: size and crop of each image

    def __call__(self, text: str, index: int, flipped: bool) -> dict[str, torch.Tensor]:
        fields = {k: v[0] for k, v in self.family.prompt_fields(self.tokenizers, text).items()}
        return {**fields, **self.family.image_fields(self.geometry, index, flipped)}
