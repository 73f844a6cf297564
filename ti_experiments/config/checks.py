"""Every setting of a composed config, checked before anything is loaded, so a typo costs a second, not
a model load.

Each config group is a typed settings class (its field types and bounds are the checks, see
settings.py); `check_config` makes all of them from a composed config, and refuses a top-level key that
no class owns, so a key added later cannot go unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from omegaconf import DictConfig, OmegaConf

from . import options
from ..data.images import DataSettings
from ..models.embeddings import check_token, placeholder_tokens
from ..errors import TIError
from ..evaluation.settings import EvaluationSettings
from ..models.settings import ModelSettings
from ..publish import HubSettings
from ..records.trackers import TrackerSettings
from .settings import Settings, bound, seed_bound
from ..training.settings import HardwareSettings, OptimizerSettings, SchedulerSettings, TrainSettings
from ..evaluation.validation import ValidationSettings
from ..evaluation.validation import make_settings as make_validation_settings


@dataclass
class ConceptSettings(Settings):
    """The `concept` group (conf/concept/*.yaml): what is learned, from which pictures."""

    GROUP = "concept"

    placeholder_token: str = bound("<concept>", example="'<my-thing>'")
    # the word the new rows start from; or a list of words, each scored by the held-out loss before
    # training (the lowest starts); or "auto": candidates proposed by the evaluation's CLIP (docs/evaluation.md)
    initializer_token: str | list[str] = bound("toy", example="toy")
    num_vectors: int = bound(1, minimum=1, example="1")
    # an embedding to start from instead of the initializer (any format run_dir.read_embedding reads)
    init_from: str | None = bound(None, example="path/to/embedding.safetensors")
    learnable_property: Literal["object", "style"] = "object"
    train_data_dir: str = bound("", example="/path/to/images")
    validation_prompt: str | None = bound(None, example="'a photo of <my-thing>'")
    # where the images come from when the folder is empty (a node with _target_), or null
    source: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        check_token(self.placeholder_token, "concept.placeholder_token", "use one word such as '<my-thing>'")
        if isinstance(self.initializer_token, list):
            if not self.initializer_token or any(not w.strip() for w in self.initializer_token):
                raise TIError(f"concept.initializer_token={self.initializer_token!r} is an empty list or holds an "
                              "empty word", "name one word or several, e.g. concept.initializer_token=[toy,cat,doll]")
            self.initializer_token = list(dict.fromkeys(self.initializer_token))

    @property
    def candidates(self) -> list[str] | None:
        """The initializer words to choose among (one: no choice); None for `auto` (proposed later)."""
        if self.initializer_token == "auto":
            return None
        return self.initializer_token if isinstance(self.initializer_token, list) else [self.initializer_token]

    @property
    def tokens(self) -> list[str]:
        """`<tok>`, `<tok>_1`, ...: the tokens the concept's vectors are added as (diffusers' names)."""
        return placeholder_tokens(self.placeholder_token, self.num_vectors)

    @property
    def placeholder_string(self) -> str:
        """How a training prompt names the concept: every one of its tokens."""
        return " ".join(self.tokens)


@dataclass
class RunSettings(Settings):
    """The top-level keys of conf/config.yaml that are not groups."""

    seed: int = seed_bound()
    # the summary.json key a searching sweeper optimises
    objective: str = bound("avg_loss", example="heldout_loss")
    # set by `reproduce`: the run this one repeats
    reproduced_from: str | None = bound(None, example="outputs/runs/DAY/TIME")


@dataclass
class PathSettings(Settings):
    """`paths`: where the run writes, and the cache of built models and downloaded images."""

    GROUP = "paths"

    # null where Hydra has not chosen the run's folder yet (a config composed outside a run)
    output_dir: str | None = bound(None, example="outputs/runs/my-run")
    cache_dir: str = bound("~/.cache/ti_experiments", example="~/.cache/ti_experiments")


@dataclass
class RunConfig:
    """A run's settings, every group typed and checked."""

    run: RunSettings
    concept: ConceptSettings
    train: TrainSettings
    hardware: HardwareSettings
    model: ModelSettings
    data: DataSettings
    optimizer: OptimizerSettings
    lr_scheduler: SchedulerSettings
    validation: ValidationSettings
    logger: TrackerSettings
    paths: PathSettings
    evaluation: EvaluationSettings | None = None
    hub: HubSettings | None = None


# the node of each group, and the class that checks it (validation is made with the concept's prompt)
GROUPS: dict[str, type[Settings]] = {
    "concept": ConceptSettings, "paths": PathSettings, "model": ModelSettings, "hardware": HardwareSettings,
    "train": TrainSettings, "data": DataSettings, "optimizer": OptimizerSettings,
    "lr_scheduler": SchedulerSettings, "validation": ValidationSettings, "evaluation": EvaluationSettings,
    "logger": TrackerSettings, "hub": HubSettings,
}
NOT_SETTINGS = ("hydra",)


def check_concept(cfg: DictConfig) -> ConceptSettings:
    if cfg.get("concept") is None:
        raise TIError("no concept chosen",
                      f"add +concept=NAME with NAME one of {', '.join(options('concept'))} "
                      "(or your own conf/concept/NAME.yaml)")
    return ConceptSettings.from_node(cfg.concept)


def check_config(cfg: DictConfig) -> RunConfig:
    """Every group of a run's config as its typed settings; the first bad value is one line naming its key."""
    top = [k for k in cfg if k not in GROUPS and k not in NOT_SETTINGS]
    settings = [f.name for f in fields(RunSettings)]
    unknown = [k for k in top if k not in settings]
    if unknown:
        raise TIError(f"{unknown[0]} is not a setting", f"remove it; the config's top-level settings are "
                      f"{', '.join(settings)} and the groups {', '.join(GROUPS)}")
    checked = {"run": RunSettings.from_node({k: cfg[k] for k in top})}
    # in GROUPS' order, so a value that others interpolate (hardware.batch_size) is named where it is set
    for name, cls in GROUPS.items():
        if name == "concept":
            checked[name] = check_concept(cfg)
        elif name == "validation":
            checked[name] = make_validation_settings(cfg.validation, checked["concept"].validation_prompt,
                                                     checked["data"].resolution, checked["model"].guidance_scale)
        elif name == "paths":  # the run's folder is Hydra's to resolve, once the run starts
            checked[name] = PathSettings.from_node(
                {k: OmegaConf.select(cfg.paths, k, throw_on_resolution_failure=False) for k in cfg.paths})
        elif cfg.get(name) is not None:
            checked[name] = cls.from_node(cfg[name])
        elif name not in ("evaluation", "hub"):
            raise TIError(f"the config has no {name} group", f"choose one, e.g. {name}=...")
    check_initializer(checked["concept"], checked.get("evaluation"))
    return RunConfig(**checked)


def check_initializer(concept: ConceptSettings, evaluation: EvaluationSettings | None) -> None:
    """Several initializer words (or `auto`) are chosen by the held-out loss: evaluation must be on, and
    `auto` needs proposed words. (One word with evaluation off simply starts, unscored.)"""
    words = concept.candidates
    if concept.init_from or (words is not None and len(words) == 1):
        return
    if evaluation is None or not evaluation.enabled:
        what = "auto" if words is None else f"{len(words)} words"
        raise TIError(f"concept.initializer_token={what} is chosen by the held-out loss, and evaluation is off",
                      f"name one word (e.g. concept.initializer_token={(words or ['toy'])[0]}), or turn evaluation "
                      "on (drop evaluation=none)")
    if words is None and not evaluation.initializer_proposals:
        raise TIError("concept.initializer_token=auto takes the words the evaluation's CLIP proposes, and "
                      "evaluation.initializer_proposals=0 asks for none",
                      "add evaluation.initializer_proposals=8, or name words, e.g. concept.initializer_token=[toy,cat]")
