"""CLIP-I, CLIP-T and DINO (the DreamBench scores), and the models that compute them.

CLIP-I: mean cosine similarity of CLIP image embeddings over all (generated, real) pairs. DINO: the same
with the CLS feature of a self-supervised DINO ViT. CLIP-T: mean cosine similarity of each generated
image with its prompt's CLIP text embedding. The models load from the Hub (DreamBench's, by default) or
a local folder; `tiny-eval-*` is a small random CLIP and ViT pair built offline here, for tests and the
demo: its numbers are in range but mean nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import TIError, cause
from ..records.files import atomic_dir

log = logging.getLogger(__name__)

# Bump when the tiny builder below changes what it writes: it names the cache folder.
TINY_EVAL_VERSION = "2"
TINY_EVAL_NAME = f"tiny-eval-{TINY_EVAL_VERSION}"
# How a user turns an older transformers model (PyTorch pickles only) into a folder this project loads.
CONVERT = ('python -c "from transformers import AutoModel, AutoProcessor; s, d = \'{src}\', \'./{name}-safetensors\'; '
           'AutoModel.from_pretrained(s).save_pretrained(d); AutoProcessor.from_pretrained(s).save_pretrained(d)"')


def build_tiny_eval_models(out_dir: Path) -> None:
    """A random CLIP (text + vision, 32 px) and a random ViT standing in for DINO, from fixed seeds."""
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer, ViTConfig,
                              ViTImageProcessorPil, ViTModel)

    from ..models.tiny import MODEL_MAX_LENGTH, seeded, write_tokenizer_files

    clip_dir, dino_dir = out_dir / "clip", out_dir / "dino"
    write_tokenizer_files(clip_dir)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir, model_max_length=MODEL_MAX_LENGTH)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    seeded(10, lambda: CLIPModel(config)).save_pretrained(clip_dir, safe_serialization=True)
    tokenizer.save_pretrained(clip_dir)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)
    vit = ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4)
    seeded(11, lambda: ViTModel(vit, add_pooling_layer=False)).save_pretrained(dino_dir, safe_serialization=True)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(dino_dir)


def ensure_tiny_eval_models(cache_dir: str | os.PathLike) -> Path:
    """The cached tiny pair's folder (`clip/` and `dino/`), built first if missing; atomic like the tiny SD."""
    target = Path(cache_dir).expanduser() / TINY_EVAL_NAME
    if (target / "dino" / "config.json").exists():
        return target
    try:
        with atomic_dir(target) as tmp:
            build_tiny_eval_models(tmp)
    except OSError:
        if not (target / "dino" / "config.json").exists():
            raise
    return target


def _local_or_download(source: str, what: str) -> str:
    """A folder as is; the tiny pair built on demand; a Hub id from the local cache, else downloaded."""
    from ..models.loading import _HUB_ID, _download, pickled_weights_error, refuse_pickled_weights

    path = Path(source).expanduser()
    if path.parent.name == TINY_EVAL_NAME:
        ensure_tiny_eval_models(path.parent.parent)
    if path.exists():
        refuse_pickled_weights(path, [path], f"evaluation.{what}", CONVERT.format(src=path, name=path.name))
        return str(path)
    fix = (f"set evaluation.{what} to a local folder or a reachable Hub id, or evaluation.image_metrics=false "
           "(evaluation=tiny works offline)")
    if not _HUB_ID.match(source) or source.startswith((".", "~", os.sep)):
        raise TIError(f"evaluation.{what} {source!r} does not exist", fix)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "model.safetensors"]
    try:
        folder = snapshot_download(source, allow_patterns=patterns, local_files_only=True)
        if (Path(folder) / "config.json").exists() and (Path(folder) / "model.safetensors").exists():
            return folder
    except Exception:  # noqa: BLE001 - not cached yet
        pass
    folder = _download(source, None, None, fix, patterns=patterns)
    if not (Path(folder) / "model.safetensors").exists():  # an older repository: PyTorch pickles only
        folder = _converted(source, patterns)
    if folder is None:
        raise pickled_weights_error(f"evaluation.{what}", source, "pytorch_model.bin on the Hub",
                                    CONVERT.format(src=source, name=source.split("/")[-1]))
    return folder


def _converted(source: str, patterns: list[str]) -> str | None:
    """The safetensors copy of an older Hub repository that Hugging Face's conversion bot proposed as a
    pull request (what transformers itself falls back to), or None."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        for pr in HfApi().get_repo_discussions(source, author="SFconvertbot", discussion_type="pull_request"):
            folder = snapshot_download(source, revision=pr.git_reference, allow_patterns=patterns)
            if (Path(folder) / "model.safetensors").exists():
                return folder
    except Exception:  # noqa: BLE001 - no such pull request, or no network: refused by the caller
        pass
    return None


def locate_models(clip_model: str, dino_model: str) -> tuple[str, str]:
    """The two models' folders (downloaded if need be) with configs of the right kind: what can be
    checked before training without loading any weights."""
    from transformers import AutoConfig

    paths = _local_or_download(str(clip_model), "clip_model"), _local_or_download(str(dino_model), "dino_model")
    try:
        kind = AutoConfig.from_pretrained(paths[0]).model_type
    except Exception as exc:  # noqa: BLE001
        kind = cause(exc)
    if kind != "clip":
        raise TIError(f"evaluation.clip_model {clip_model!r} is not a CLIP model ({kind})",
                      "set evaluation.clip_model to a CLIP model folder or Hub id, e.g. openai/clip-vit-base-patch32")
    if not any((Path(paths[1]) / name).is_file() for name in ("config.json", "attributes.safetensors")):
        raise TIError(f"evaluation.dino_model {dino_model!r} has no config.json",
                      "set evaluation.dino_model to a ViT (DINO) model folder or Hub id, e.g. facebook/dino-vits16")
    return paths


class EvalModels:
    """CLIP (image and text towers) and DINO, in eval mode on one device, with their preprocessing."""

    def __init__(self, clip_model: str, dino_model: str, device):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.device = torch.device(device)
        clip_path, dino_path = locate_models(clip_model, dino_model)
        try:
            self.clip = CLIPModel.from_pretrained(clip_path, use_safetensors=True).to(self.device).eval()
            self.clip_tokenizer = AutoTokenizer.from_pretrained(clip_path)
            self.clip_processor = AutoImageProcessor.from_pretrained(clip_path, backend="pil")
            self.dino = _feature_model(dino_path).to(self.device).eval()
            self.dino_processor = AutoImageProcessor.from_pretrained(dino_path, backend="pil")
        except TIError:
            raise
        except Exception as exc:  # noqa: BLE001
            first = cause(exc)
            raise TIError(f"could not load the evaluation models {clip_model!r} / {dino_model!r}: {first}",
                          "set evaluation.clip_model to a CLIP and evaluation.dino_model to a ViT (DINO) model "
                          "folder or Hub id") from None

    @torch.no_grad()
    def image_features(self, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length CLIP and DINO (CLS) features of PIL images: [N, d_clip], [N, d_dino]."""
        clip_px = self.clip_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        clip = self.clip.get_image_features(pixel_values=clip_px).pooler_output
        dino_px = self.dino_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        dino = self.dino(pixel_values=dino_px).last_hidden_state[:, 0]
        return _unit(clip), _unit(dino)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.clip_tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return _unit(self.clip.get_text_features(**tokens).pooler_output)


def _feature_model(path: str):
    """DINO's ViT, or the toy world judge's attribute classifier: both give a CLS-like feature first."""
    from transformers import ViTModel

    if (Path(path) / "attributes.safetensors").is_file():
        from ..toyworld.judge import AttributeFeatures

        return AttributeFeatures(path)
    return ViTModel.from_pretrained(path, add_pooling_layer=False, use_safetensors=True)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class ImageScorer:
    """Scores generated images against the concept's real images (features computed once)."""

    def __init__(self, models: EvalModels, real_images: list):
        if not real_images:
            raise TIError("image metrics need the concept's images, and there are none",
                          "check concept.train_data_dir")
        self.models = models
        self.real_clip, self.real_dino = models.image_features(real_images)

    def score(self, images: list, texts: list[str]) -> dict[str, float]:
        """`texts[i]` is the prompt of `images[i]`, as CLIP-T reads it."""
        clip, dino = self.models.image_features(images)
        text = self.models.text_features(texts)
        return {
            "clip_i": (clip @ self.real_clip.T).mean().item(),
            "clip_t": (clip * text).sum(-1).mean().item(),
            "dino": (dino @ self.real_dino.T).mean().item(),
        }
