"""Load the frozen Stable Diffusion parts that textual inversion needs, from the Hub or a folder."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from ..errors import TIError, cause

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SDComponents:
    """The frozen parts. `unet` may be given as a loader: it is then loaded on first use (`load_unet`, with
    the layout training will use, or the `unet` property), when training starts.
    SDXL models also have `tokenizer_2` and `text_encoder_2` (None otherwise)."""

    def __init__(self, tokenizer, text_encoder, vae, unet, noise_scheduler, source: str, resolution: int,
                 tokenizer_2=None, text_encoder_2=None):
        self.tokenizer, self.text_encoder, self.vae = tokenizer, text_encoder, vae
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.noise_scheduler, self.source, self.resolution = noise_scheduler, source, resolution
        self._unet = unet
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> list:
        """The encoders whose placeholder rows are trained: one for SD 1.x/2.x, two for SDXL."""
        return [self.text_encoder] + ([self.text_encoder_2] if self.is_sdxl else [])

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer] + ([self.tokenizer_2] if self.is_sdxl else [])

    @property
    def unet(self):
        return self.load_unet()

    def load_unet(self, channels_last: bool = False):
        """The UNet, loaded now if it was deferred: convolutions channels-last from the start when asked
        (where the loader can; placement converts the rest)."""
        if callable(self._unet) and not isinstance(self._unet, torch.nn.Module):
            self._unet = self._unet(channels_last=channels_last)
        return self._unet


REQUIRED_SUBFOLDERS = ("tokenizer", "scheduler", "text_encoder", "vae", "unet")


def _from_pretrained(source: str, revision: str | None, variant: str | None, local_only: bool):
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    common = {"local_files_only": local_only}
    weights = {**common, "revision": revision}
    parts = dict(
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", variant=variant, **weights),
        unet=_deferred(lambda channels_last: _load_unet(source, revision, variant, weights, channels_last), source),
    )
    if _is_sdxl(source, revision, local_only):  # SDXL: the second encoder (with the pooled projection)
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **common)
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2",
                                                                              **weights)
    return parts


def _load_unet(source: str, revision: str | None, variant: str | None, weights: dict, channels_last: bool):
    """A folder's UNet with its weights copied into memory once (models/weights.py says why), else
    diffusers' loading (a Hub id, .bin weights, keys that need converting)."""
    from diffusers import UNet2DConditionModel

    from .weights import load_unet

    unet = load_unet(source, variant, channels_last=channels_last) if Path(source).is_dir() else None
    return unet if unet is not None else UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", variant=variant, **weights)


def _cached_snapshot(source: str, revision: str | None, variant: str | None) -> str | None:
    """The folder of a Hub model already in the local Hugging Face cache (no network), or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, revision=revision, allow_patterns=_weight_patterns(variant),
                                 local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or not complete): the caller downloads
        return None


def _is_sdxl(source: str, revision: str | None, local_only: bool) -> bool:
    """A folder with text_encoder_2/, or a Hub model whose model_index.json names one."""
    import json

    path = Path(source)
    if path.is_dir():
        return (path / "text_encoder_2").is_dir()
    from huggingface_hub import hf_hub_download

    index = json.loads(Path(hf_hub_download(source, "model_index.json", revision=revision,
                                            local_files_only=local_only)).read_text())
    return (index.get("text_encoder_2") or [None])[0] is not None


def _deferred(load, source: str):
    """A loader whose failure still reaches the user as one clear line."""
    def run(**kwargs):
        try:
            return load(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise TIError(f"could not load the UNet of {source!r}: {cause(exc)}",
                          "check the model folder (unet/ weights) or model.pretrained_model_name_or_path") from None
    return run


def _weight_patterns(variant: str | None) -> list[str]:
    """Only what training loads: configs, tokenizer, and one safetensors copy of each network."""
    v = f".{variant}" if variant else ""
    patterns = ["model_index.json", "tokenizer/*", "tokenizer_2/*", "scheduler/*", "*/config.json"]
    for sub in ("text_encoder", "text_encoder_2"):  # text_encoder_2: SDXL only
        patterns += [f"{sub}/model.safetensors", f"{sub}/model-*.safetensors", f"{sub}/model.safetensors.index.json"]
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
                      f"access?): {cause(exc)}", fix + " (model=tiny and model=tiny_sdxl work offline)") from None


def _local_folder(source: str, fix: str) -> Path | None:
    """The local folder `source` names; None when it is a Hub id; a path that does not exist is an error
    (never mistaken for a Hub id and looked up on the network)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(source) or source.startswith((".", "~", os.sep)):
        raise TIError(f"model path {source!r} does not exist", fix)
    return None


def load_components(pretrained_model_name_or_path: str, revision: str | None = None,
                    variant: str | None = None, resolution: int = 512, architecture: str | None = None,
                    random_init: bool = False, cache_dir: str | None = None,
                    mixed_precision: str | None = None, guidance_scale: float | None = None) -> SDComponents:
    """Local diffusers folder, or Hub id (the local HF cache first, then the network); or, with
    random_init, the named architecture with random weights (offline, for speed and memory), written to
    a folder in the cache once and loaded from there like any other model.
    SDXL (a text_encoder_2) is recognised from the model itself. `mixed_precision` and `guidance_scale`
    are the model's preferred precision and guidance, which the hardware presets, validation and
    generate read from the config; loading ignores them."""
    if random_init:
        from .random_init import ensure_random_model

        pretrained_model_name_or_path = ensure_random_model(str(architecture), cache_dir or "~/.cache/ti_experiments")
    source = str(pretrained_model_name_or_path)
    fix = "set model.pretrained_model_name_or_path to a local diffusers folder or a reachable Hub id"
    path = _local_folder(source, fix)
    if path is not None:
        missing = [sub for sub in REQUIRED_SUBFOLDERS if not (path / sub).is_dir()]
        if missing:
            raise TIError(f"model folder {source!r} lacks {', '.join(m + '/' for m in missing)} (a Stable "
                          f"Diffusion folder in diffusers layout has {', '.join(REQUIRED_SUBFOLDERS)})", fix)
        try:
            parts = _from_pretrained(str(path), revision, variant, local_only=True)
        except Exception as exc:  # noqa: BLE001
            raise TIError(f"could not load the model folder {source!r}: {cause(exc)}", fix) from None
    else:
        try:  # already in the local Hugging Face cache: no network needed
            cached = _cached_snapshot(source, revision, variant)
            parts = _from_pretrained(cached, None, variant, local_only=True) if cached else \
                _from_pretrained(source, revision, variant, local_only=True)
        except Exception:  # noqa: BLE001
            folder = _download(source, revision, variant, fix)
            try:
                parts = _from_pretrained(folder, None, variant, local_only=True)
            except Exception as exc:  # noqa: BLE001
                raise TIError(f"could not load model {source!r}: {cause(exc)}", fix) from None
    return SDComponents(source=source, resolution=resolution, **parts)


def load_tiny_components(pretrained_model_name_or_path: str, resolution: int = 64,
                         mixed_precision: str | None = None, guidance_scale: float | None = None) -> SDComponents:
    """The offline demo models (SD and SDXL): built once, deterministically, into the cache, then loaded
    like any folder."""
    path = Path(str(pretrained_model_name_or_path)).expanduser()
    ensure_offline_model(path)
    return load_components(str(path), resolution=resolution)


def ensure_offline_model(path: str | Path) -> bool:
    """Build an offline tiny model (SD or SDXL) if `path` is where one belongs and it is missing; True for
    such a path. Only a folder named after the builder's version is built (bit-identically, anywhere)."""
    from .tiny import TINY_MODEL_VERSION, ensure_tiny_model
    from .tiny_sdxl import TINY_SDXL_VERSION, ensure_tiny_sdxl_model

    path = Path(str(path)).expanduser()
    if path.name == f"tiny-sd-{TINY_MODEL_VERSION}":
        ensure_tiny_model(path.parent)  # build it only where this version's folder belongs
    elif path.name == f"tiny-sdxl-{TINY_SDXL_VERSION}":
        ensure_tiny_sdxl_model(path.parent)
    else:
        return False
    return True


def load_pipeline(pretrained_model_name_or_path: str, revision: str | None = None, variant: str | None = None,
                  torch_dtype: torch.dtype = torch.float32):
    """A whole pipeline for generating, of the class its model_index.json names (SD 1.x/2.x or SDXL);
    a local folder, or a Hub id from the local cache first, then the network, as `load_components` does."""
    from huggingface_hub import snapshot_download

    source = str(pretrained_model_name_or_path)
    fix = "pass --model (model= in Python) with a local diffusers folder or a reachable Hub id"
    path = _local_folder(source, fix)
    if path is not None:
        folder = str(path)
    else:
        try:  # already in the local Hugging Face cache: no network needed
            folder = snapshot_download(source, revision=revision, allow_patterns=_weight_patterns(variant),
                                       local_files_only=True)
        except Exception:  # noqa: BLE001
            folder = _download(source, revision, variant, fix)
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise TIError(f"model folder {source!r} is not a diffusers pipeline folder (no model_index.json)", fix)
    from diffusers import DiffusionPipeline

    # SD 1.x folders name a safety checker; its weights are not downloaded and generation does not need it.
    try:
        components = json.loads(index.read_text())
    except ValueError:
        raise TIError(f"{index} is not valid JSON", fix) from None
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} \
        if "safety_checker" in components else {}
    try:
        return DiffusionPipeline.from_pretrained(folder, dtype=torch_dtype, variant=variant,
                                                 local_files_only=True, **extra)
    except Exception as exc:  # noqa: BLE001
        raise TIError(f"could not load the pipeline of {source!r}: {cause(exc)}", fix) from None
