"""Load the frozen Stable Diffusion parts that textual inversion needs, from the Hub or a folder."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ..errors import TIError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SDComponents:
    """The frozen parts. `unet` may be given as a zero-argument loader: it is then loaded on first use,
    after the VAE has encoded the training images and left, so the two never share memory."""

    def __init__(self, tokenizer, text_encoder, vae, unet, noise_scheduler, source: str, resolution: int):
        self.tokenizer, self.text_encoder, self.vae = tokenizer, text_encoder, vae
        self.noise_scheduler, self.source, self.resolution = noise_scheduler, source, resolution
        self._unet = unet
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def unet(self):
        if callable(self._unet) and not isinstance(self._unet, torch.nn.Module):
            self._unet = self._unet()
        return self._unet


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _from_pretrained(source: str, revision: str | None, variant: str | None, local_only: bool):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    common = {"local_files_only": local_only}
    weights = {**common, "revision": revision}
    return dict(
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", variant=variant, **weights),
        unet=_deferred(lambda: UNet2DConditionModel.from_pretrained(source, subfolder="unet", variant=variant,
                                                                   **weights), source),
    )


def _deferred(load, source: str):
    """A loader whose failure still reaches the user as one clear line."""
    def run():
        try:
            return load()
        except Exception as exc:  # noqa: BLE001
            raise TIError(f"could not load the UNet of {source!r}: {_first_line(exc)}",
                          "check the model folder (unet/ weights) or model.pretrained_model_name_or_path") from None
    return run


def _weight_patterns(variant: str | None) -> list[str]:
    """Only what training loads: configs, tokenizer, and one safetensors copy of each network."""
    v = f".{variant}" if variant else ""
    patterns = ["model_index.json", "tokenizer/*", "scheduler/*", "*/config.json",
                "text_encoder/model.safetensors", "text_encoder/model-*.safetensors",
                "text_encoder/model.safetensors.index.json"]
    for sub in ("unet", "vae"):
        patterns += [f"{sub}/diffusion_pytorch_model{v}.safetensors", f"{sub}/diffusion_pytorch_model{v}-*.safetensors",
                     f"{sub}/diffusion_pytorch_model{v}.safetensors.index.json"]
    return patterns


def _download(source: str, revision: str | None, variant: str | None, fix: str,
              patterns: list[str] | None = None) -> str:
    """One snapshot download: it fails within seconds without a network, unlike per-file loading,
    which retries every file with back-off for minutes."""
    from huggingface_hub import snapshot_download

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise TIError(f"model {source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set", fix)
    log.info("downloading %s from the Hugging Face Hub", source)
    try:
        return snapshot_download(source, revision=revision, allow_patterns=patterns or _weight_patterns(variant))
    except Exception as exc:  # noqa: BLE001
        raise TIError(f"could not download model {source!r} from the Hugging Face Hub (no network, or no "
                      f"access?): {_first_line(exc)}", fix + " (model=tiny works offline)") from None


def load_components(pretrained_model_name_or_path: str, revision: str | None = None,
                    variant: str | None = None, resolution: int = 512, architecture: str | None = None,
                    random_init: bool = False, cache_dir: str | None = None) -> SDComponents:
    """Local diffusers folder, or Hub id (the local HF cache first, then the network); or, with
    random_init, the named architecture with random weights (offline, for speed and memory)."""
    if random_init:
        from .random_init import random_components

        parts = random_components(str(architecture), cache_dir or "~/.cache/ti_experiments")
        return SDComponents(source=f"random:{architecture}", resolution=resolution, **parts)
    source = str(pretrained_model_name_or_path)
    fix = "set model.pretrained_model_name_or_path to a local diffusers folder or a reachable Hub id"
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "unet").is_dir() or not (path / "text_encoder").is_dir():
            raise TIError(f"model folder {source!r} is not a Stable Diffusion folder in diffusers layout "
                          "(no unet/ or text_encoder/)", fix)
        try:
            parts = _from_pretrained(str(path), revision, variant, local_only=True)
        except Exception as exc:  # noqa: BLE001
            raise TIError(f"could not load the model folder {source!r}: {_first_line(exc)}", fix) from None
    elif not _HUB_ID.match(source) or source.startswith((".", "~", os.sep)):
        raise TIError(f"model path {source!r} does not exist", fix)
    else:
        try:  # already in the local Hugging Face cache: no network needed
            parts = _from_pretrained(source, revision, variant, local_only=True)
        except Exception:  # noqa: BLE001
            folder = _download(source, revision, variant, fix)
            try:
                parts = _from_pretrained(folder, None, variant, local_only=True)
            except Exception as exc:  # noqa: BLE001
                raise TIError(f"could not load model {source!r}: {_first_line(exc)}", fix) from None
    return SDComponents(source=source, resolution=resolution, **parts)


def load_tiny_components(pretrained_model_name_or_path: str, resolution: int = 64) -> SDComponents:
    """The offline demo model: built once, deterministically, into the cache, then loaded like any folder."""
    from .tiny import TINY_MODEL_VERSION, ensure_tiny_model

    path = Path(str(pretrained_model_name_or_path)).expanduser()
    if path.name == f"tiny-sd-{TINY_MODEL_VERSION}":
        ensure_tiny_model(path.parent)  # build it only where this version's folder belongs
    return load_components(str(path), resolution=resolution)
