"""Every option of every config group composes, every _target_ instantiates, the contract keys exist."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]

CONTRACT_KEYS = [
    "model.pretrained_model_name_or_path", "concept.placeholder_token", "concept.initializer_token",
    "concept.num_vectors", "concept.init_from", "concept.learnable_property", "concept.train_data_dir",
    "concept.validation_prompt", "data.resolution", "optimizer.lr", "train.max_steps", "train.batch_size",
    "train.gradient_accumulation_steps", "train.scale_lr", "train.save_steps", "train.checkpointing_steps",
    "train.checkpoints_total_limit", "train.resume_from_checkpoint", "hardware.mixed_precision",
    "hardware.gradient_checkpointing", "seed", "data.captions", "data.caption_extension", "data.templates",
    "hub.push", "hub.repo_id", "hub.private",
]


def _overrides(group: str, option: str) -> list[str]:
    if group == "experiment":  # a `_global_` preset, not in the defaults
        return ["+concept=cat_toy", f"+experiment={option}"]
    if group == "concept":
        extra = ["concept.train_data_dir=/tmp/x"] if option == "my_style" else []
        return [f"+concept={option}", *extra]
    return ["+concept=demo", f"{group}={option}"]


def test_expected_groups_and_options_exist():
    options = {g: {o for gg, o in OPTIONS if gg == g} for g in GROUPS}
    assert {"model", "data", "optimizer", "lr_scheduler", "hardware", "concept", "logger", "hub"} <= set(GROUPS)
    assert {"sd15", "sd21", "tiny", "sdxl", "tiny_sdxl"} <= options["model"]
    assert {"v100", "a100", "low_vram", "cpu"} <= options["hardware"]
    assert {"cat_toy", "demo"} <= options["concept"]
    assert {"wandb", "tensorboard", "none"} <= options["logger"]
    assert {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
            "polynomial"} <= options["lr_scheduler"]
    assert "adamw" in options["optimizer"] and len(options["optimizer"]) >= 2
    assert "concept" not in OmegaConf.load(CONF_DIR / "config.yaml").defaults[0]


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose(*_overrides(group, option), output_dir=tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["train" if group == "experiment" else group] is not None
    for key in CONTRACT_KEYS:
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key


def test_mission_command_composes(tmp_path):
    cfg = compose("+concept=cat_toy", "hardware=low_vram", output_dir=tmp_path)
    assert cfg.concept.placeholder_token == "<cat-toy>"
    assert cfg.concept.initializer_token == "toy"
    assert cfg.concept.validation_prompt == "A <cat-toy> train"
    assert cfg.hardware.mixed_precision == "fp16" and cfg.hardware.gradient_checkpointing
    assert cfg.train.batch_size == 1 and cfg.train.gradient_accumulation_steps == 4
    assert cfg.data.resolution == 512  # follows the model's native resolution


def test_sd21_is_768_and_hardware_only_sets_hardware(tmp_path):
    assert compose("+concept=demo", "model=sd21", output_dir=tmp_path).data.resolution == 768
    for option in ("v100", "a100", "low_vram", "cpu"):
        keys = set(_hardware_preset(option))
        assert keys == {"mixed_precision", "allow_tf32", "gradient_checkpointing", "attention", "offload_idle", "channels_last",
                        "batch_size", "gradient_accumulation_steps"}
        assert set(compose("+concept=demo", f"hardware={option}").hardware) == keys


def _hardware_preset(option: str):
    """A hardware preset as it applies: conf/hardware/base.yaml with the preset's differences over it."""
    preset = OmegaConf.load(CONF_DIR / "hardware" / f"{option}.yaml")
    assert [str(d) for d in preset.pop("defaults")] == ["base", "_self_"]
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "hardware" / "base.yaml"), preset)


def test_hardware_presets_state_only_what_differs_from_base():
    base = OmegaConf.load(CONF_DIR / "hardware" / "base.yaml")
    for option in ("v100", "a100", "low_vram", "cpu"):
        preset = OmegaConf.load(CONF_DIR / "hardware" / f"{option}.yaml")
        diff = {k: v for k, v in preset.items() if k != "defaults"}
        assert all(k in base and base._get_node(k)._value() != preset._get_node(k)._value() for k in diff), option


def test_demo_concepts_are_pure_concepts_with_the_demo_experiment():
    for name in ("demo", "demo_style"):
        concept = OmegaConf.load(CONF_DIR / "concept" / f"{name}.yaml")
        assert "train" not in concept and list(concept.defaults) == ["/experiment/demo", "_self_"]
        cfg = compose(f"+concept={name}")
        assert (cfg.train.max_steps, cfg.train.save_steps, cfg.train.checkpointing_steps) == (300, 100, 100)
        assert cfg.train.batch_size == 8 and cfg.model.pretrained_model_name_or_path.endswith("weights/model")
        assert compose(f"+concept={name}", "train.max_steps=2").train.max_steps == 2  # the command line wins
    assert compose("+concept=cat_toy", "+experiment=demo").train.max_steps == 300
    assert compose("+concept=cat_toy").train.max_steps == 3000


@pytest.mark.parametrize("hardware,sd,sdxl", [
    ("cpu", "no", "bf16"), ("v100", "fp16", "fp16"), ("a100", "bf16", "bf16"), ("low_vram", "fp16", "bf16"),
])
def test_sdxl_composes_with_every_preset_and_prefers_bf16(tmp_path, hardware, sd, sdxl):
    """The model's preference (model.mixed_precision) is each preset's precision where the hardware can
    run it; Volta (v100) has no bf16. Everything else of the preset applies unchanged."""
    for model, expected in (("sd15", sd), ("tiny", sd), ("sdxl", sdxl), ("tiny_sdxl", sdxl)):
        cfg = compose("+concept=demo", f"model={model}", f"hardware={hardware}", output_dir=tmp_path)
        assert cfg.hardware.mixed_precision == expected, model
        preset = _hardware_preset(hardware)
        assert cfg.hardware.batch_size == preset.batch_size
    cfg = compose("+concept=demo", "model=sdxl", f"hardware={hardware}", "hardware.mixed_precision=no",
                  output_dir=tmp_path)
    assert cfg.hardware.mixed_precision == "no"  # an explicit choice wins
    sdxl_cfg = compose("+concept=demo", "model=sdxl", output_dir=tmp_path)
    assert sdxl_cfg.data.resolution == 1024
    assert sdxl_cfg.model.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"


def _targets(node, path=""):
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from _targets(node[key], f"{path}.{key}" if path else str(key))


def _all_target_nodes():
    seen = {}
    for group, option in OPTIONS:
        cfg = compose(*_overrides(group, option), output_dir=Path("/tmp/unused"))
        for path, node in _targets(cfg):
            seen.setdefault((path, node._target_, group if path.startswith(group) else ""), (cfg, node))
    return seen


def test_every_target_instantiates(tmp_path, tiny_model_path):
    """Cheap targets are built for real; the Hub loaders are resolved and their arguments bound."""
    params = [torch.nn.Parameter(torch.zeros(2, 4))]
    built = 0
    for (path, target, _), (cfg, node) in _all_target_nodes().items():
        fn = get_object(target)
        kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                  if not k.startswith("_")}
        if path in ("data", "logger"):
            assert instantiate(node) is not None
        elif path == "optimizer":
            opt = instantiate(node)(params=params)
            assert isinstance(opt, torch.optim.Optimizer)
        elif path == "lr_scheduler":
            opt = torch.optim.SGD(params, lr=0.1)
            sched = instantiate(node)(optimizer=opt, num_training_steps=10)
            assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
        elif path == "model" and target.endswith("load_tiny_components"):
            assert instantiate(node).tokenizer is not None
        elif path == "concept.source" and kwargs.get("kind"):
            out = instantiate(node, target_dir=tmp_path / f"demo-{kwargs['kind']}")
            assert len(list(out.glob("*.png"))) >= 3
        else:  # needs the network: check that the config fits the function
            inspect.signature(fn).bind(**kwargs, **({"target_dir": "x"} if path == "concept.source" else {}))
        built += 1
    assert built >= 15


def test_sweep_and_hydra_settings(tmp_path):
    from ti_experiments.config import compose as ti_compose

    cfg = ti_compose(["+concept=demo"], return_hydra_config=True)
    assert cfg.hydra.job.chdir is False
    assert cfg.hydra.run.dir.startswith("outputs/") and cfg.hydra.sweep.dir.startswith("outputs/")


@pytest.mark.parametrize("launcher", ["slurm", "parallel"])
def test_launcher_configs_compose(launcher, monkeypatch):
    from ti_experiments.config import compose as ti_compose

    monkeypatch.setenv("TI_OUTPUT_ROOT", "/shared/ti")
    cfg = ti_compose(["+concept=demo", f"hydra/launcher={launcher}"], return_hydra_config=True)
    launcher_cfg = cfg.hydra.launcher
    if launcher == "slurm":
        assert launcher_cfg._target_.endswith("SlurmLauncher")
        assert launcher_cfg.gpus_per_node == 1 and launcher_cfg.timeout_min > 0 and "partition" in launcher_cfg
        assert cfg.hydra.sweep.dir.startswith("/shared/ti/sweeps/")  # TI_OUTPUT_ROOT: shared storage
        assert launcher_cfg.submitit_folder.startswith("/shared/ti/sweeps/")
    else:
        assert launcher_cfg._target_.endswith("JoblibLauncher") and launcher_cfg.n_jobs == 2
