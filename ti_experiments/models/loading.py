"""Load the frozen Stable Diffusion parts that textual inversion needs, from the Hub or a folder."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from ..errors import TIError, cause
from .family import ModelFamily
from .sd import StableDiffusion
from .sdxl import StableDiffusionXL

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SDComponents:
    """The frozen parts. `family` (models/family.py) answers everything that differs between model families;
    `tokenizers` and `text_encoders` hold one entry per encoder whose placeholder rows train (SDXL: two).
    `unet` may be given as a loader: it is then loaded on first use (`load_unet`, with the layout training
    will use, or the `unet` property), when training starts."""

    def __init__(self, family: ModelFamily, tokenizers: list, text_encoders: list, vae, unet, noise_scheduler,
                 source: str, resolution: int):
        self.family, self.tokenizers, self.text_encoders = family, list(tokenizers), list(text_encoders)
        self.vae, self.noise_scheduler, self.source, self.resolution = vae, noise_scheduler, source, resolution
        self._unet = unet
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def tokenizer(self):
        """The first tokenizer: the one whose vocabulary checks and prompts are measured with."""
        return self.tokenizers[0]

    @property
    def text_encoder(self):
        return self.text_encoders[0]

    @property
    def unet(self):
        return self.load_unet()

    def load_unet(self, channels_last: bool = False):
        """The UNet, loaded now if it was deferred: convolutions channels-last from the start when asked
        (where the loader can; placement converts the rest)."""
        if callable(self._unet) and not isinstance(self._unet, torch.nn.Module):
            self._unet = self._unet(channels_last=channels_last)
        return self._unet


# most specific first: an SDXL folder also has a text_encoder/
FAMILIES: tuple[ModelFamily, ...] = (StableDiffusionXL(), StableDiffusion())


def family_of(components: dict) -> ModelFamily:
    """The family a model_index.json's components (or a folder's subfolders) describe."""
    for family in FAMILIES:
        if family.recognises(components):
            return family
    raise TIError("the model has no text encoder this project can train a token in",
                  "use a Stable Diffusion 1.x/2.x or SDXL model in diffusers layout")


def family_for_encoders(count: int) -> ModelFamily:
    """The family whose embeddings have one set of rows for each of `count` text encoders."""
    for family in FAMILIES:
        if family.num_encoders == count:
            return family
    raise TIError(f"an embedding for {count} text encoders fits no model family this project knows",
                  "use an SD 1.x/2.x (one encoder) or SDXL (two) embedding")


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of a loaded diffusers pipeline, from the components it holds."""
    return family_of({name: [None, type(module).__name__] for name, module in pipe.components.items()
                      if module is not None})


REQUIRED_SUBFOLDERS = ("tokenizer", "scheduler", "text_encoder", "vae", "unet")


def _from_pretrained(source: str, revision: str | None, variant: str | None, local_only: bool):
    from diffusers import AutoencoderKL, DDPMScheduler

    common = {"local_files_only": local_only}
    weights = {**common, "revision": revision, "use_safetensors": True}  # never a pickle (refuse_pickled_weights)
    family = _family(source, revision, local_only)
    tokenizers, text_encoders = family.load_text_parts(source, common, weights)
    return dict(
        family=family, tokenizers=tokenizers, text_encoders=text_encoders,
        noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", variant=variant, **weights),
        unet=_deferred(lambda channels_last: _load_unet(source, revision, variant, weights, channels_last), source),
    )


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


def _family(source: str, revision: str | None, local_only: bool) -> ModelFamily:
    """A folder's family from its subfolders; a Hub model's from its model_index.json."""
    import json

    path = Path(source)
    if path.is_dir():
        return family_of({p.name: [p.name, p.name] for p in path.iterdir() if p.is_dir()})
    from huggingface_hub import hf_hub_download

    index = json.loads(Path(hf_hub_download(source, "model_index.json", revision=revision,
                                            local_files_only=local_only)).read_text())
    return family_of(index)


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
    folders = {pair for family in FAMILIES for pair in family.component_folders}
    patterns = ["model_index.json", "scheduler/*", "*/config.json"] + sorted(f"{t}/*" for t, _ in folders)
    for sub in sorted(e for _, e in folders):  # every family's encoders; a model has only its own
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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT = ('python -c "from diffusers import DiffusionPipeline as P; P.from_pretrained(\'{src}\')'
           '.save_pretrained(\'{src}-safetensors\')"')


def refuse_pickled_weights(folder: Path, parts: list[Path], setting: str, convert: str | None = None) -> None:
    """Refuse, in one line, a folder whose weights are only PyTorch pickles (an older export, or a
    repository from before safetensors): loading a pickle can run code its author put there, and this
    project loads only what it can read as data. The user converts once, knowingly, in their own process."""
    for part in parts:
        files = [f for f in part.iterdir() if f.is_file()] if part.is_dir() else []
        pickles = [f for f in files if f.suffix in PICKLE_SUFFIXES]
        if pickles and not any(f.suffix == ".safetensors" for f in files):
            raise pickled_weights_error(setting, str(folder), str(pickles[0].relative_to(folder)),
                                        convert or CONVERT.format(src=folder))


def pickled_weights_error(setting: str, source: str, found: str, convert: str) -> TIError:
    """The one line for weights that exist only as pickles (`found`), with the command that converts them."""
    return TIError(f"{setting} {source!r} has only PyTorch pickle weights ({found}), which this project never "
                   "loads (a pickle can run code)",
                   f"convert it once to safetensors, e.g. {convert}, and point {setting} at the new folder")


def _weight_folders(path: Path) -> list[Path]:
    """The subfolders whose weights training or generation loads (not, say, SD 1.x's safety checker)."""
    names = {e for family in FAMILIES for _, e in family.component_folders} | {"unet", "vae"}
    return [path / n for n in sorted(names) if (path / n).is_dir()]


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
    The family (SD 1.x/2.x, SDXL) is recognised from the model itself. `mixed_precision` and
    `guidance_scale` are the model's preferred precision and guidance, which the hardware presets,
    validation and generate read from the config; loading ignores them."""
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
        refuse_pickled_weights(path, _weight_folders(path), "model.pretrained_model_name_or_path")
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
    refuse_pickled_weights(Path(folder), _weight_folders(Path(folder)), "--model")
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
                                                 local_files_only=True, use_safetensors=True, **extra)
    except Exception as exc:  # noqa: BLE001
        raise TIError(f"could not load the pipeline of {source!r}: {cause(exc)}", fix) from None
