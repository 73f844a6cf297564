"""The toy world's judge, read back from its shipped folder: which value of each attribute an image shows.

GenEval scores a generated image as right or wrong per attribute with a detector and a colour
classifier; here a small CNN with one head per attribute plays both parts. (The judge's CLIP, in the
same folder, is what CLIP-I / CLIP-T use.) Its accuracy on fresh renders is measured by
`python -m ti_experiments_dev.quality judge`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from . import shipped, world


def load_classifier(folder: str | Path = shipped.JUDGE_DIR) -> AttributeClassifier:
    classifier = AttributeClassifier().eval()
    classifier.load_state_dict(load_file(str(Path(folder) / "attributes.safetensors")))  # fp16 on disk, fp32 here
    return classifier


class AttributeFeatures(torch.nn.Module):
    """The classifier's feature (what it knows of every attribute) in a ViT's output shape, so the
    evaluation's image-feature score (DINO's slot) can read it like a CLS token."""

    def __init__(self, folder: str | Path):
        super().__init__()
        self.classifier = load_classifier(folder)

    def forward(self, pixel_values: torch.Tensor):
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=self.classifier.trunk(pixel_values)[:, None])


class Judge:
    def __init__(self, folder: str | Path = shipped.JUDGE_DIR):
        self.classifier = load_classifier(folder)

    @staticmethod
    def pixels(images: list[Image.Image]) -> torch.Tensor:
        """PIL images as the judge saw them in training: 32 px, values in [-1, 1]."""
        size = (world.SIZE_PX, world.SIZE_PX)
        arrays = [np.asarray(im.convert("RGB").resize(size, Image.BILINEAR) if im.size != size else im.convert("RGB"),
                             np.float32) for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1

    @torch.no_grad()
    def classify(self, images: list[Image.Image], batch_size: int = 256) -> dict[str, list[str]]:
        """Each attribute's most likely value, per image."""
        out: dict[str, list[str]] = {name: [] for name in world.ATTRIBUTES}
        for start in range(0, len(images), batch_size):
            for name, logits in self.classifier(self.pixels(images[start:start + batch_size])).items():
                out[name] += [world.ATTRIBUTES[name][i] for i in logits.argmax(-1).tolist()]
        return out

    def accuracy(self, images: list[Image.Image], scenes: list[world.Scene]) -> dict[str, float]:
        """The share of images judged right, per attribute, against the scenes they should show."""
        judged = self.classify(images)
        truth = [s.labels() for s in scenes]
        return {name: float(np.mean([world.ATTRIBUTES[name][t[name]] == v for t, v in zip(truth, judged[name])]))
                for name in world.ATTRIBUTES}


class AttributeClassifier(torch.nn.Module):
    """A small CNN that names the value of every attribute of a 32 px image (GenEval's per-attribute check).

    Convolutions see shapes that 4 px patches blur; pooling to a 3 x 3 grid keeps where things are.
    """

    def __init__(self, width: int = 64):
        super().__init__()

        def block(c_in, c_out, stride):
            return [torch.nn.Conv2d(c_in, c_out, 3, stride, 1), torch.nn.GroupNorm(8, c_out), torch.nn.SiLU()]

        self.trunk = torch.nn.Sequential(*block(3, width // 2, 1), *block(width // 2, width, 1), *block(width, width, 2),
                                         *block(width, 2 * width, 1), *block(2 * width, 2 * width, 2),
                                         torch.nn.AdaptiveAvgPool2d(3), torch.nn.Flatten(),
                                         torch.nn.Linear(18 * width, 4 * width), torch.nn.SiLU())
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(4 * width, len(values))
                                          for name, values in world.ATTRIBUTES.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.trunk(pixels)
        return {name: head(feature) for name, head in self.heads.items()}
