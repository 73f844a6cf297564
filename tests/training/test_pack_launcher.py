"""How the packed launcher groups a sweep's jobs into packs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ti_experiments.errors import TIError
from ti_experiments.training.pack_launcher import describe_plan, plan


def _job(num: int, **changes):
    cfg = {"model": {"name": "toyworld"}, "data": {"resolution": 32}, "hardware": {"mixed_precision": "no"},
           "concept": {"train_data_dir": "/images", "source": None, "num_vectors": 1}, "optimizer": {"lr": 1e-3},
           "seed": 0, "train": {"max_steps": 300}, "hydra": {"job": {"num": num}}}
    cfg = OmegaConf.create(cfg)
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def test_jobs_that_share_model_images_and_hardware_share_a_pack_whatever_else_differs():
    jobs = [_job(0), _job(1, optimizer__lr=5e-3), _job(2, concept__num_vectors=4, seed=3),
            _job(3, train__max_steps=10)]
    assert plan(jobs, max_jobs=8) == [[0, 1, 2, 3]]


def test_jobs_that_differ_in_model_images_resolution_or_hardware_are_split():
    jobs = [_job(0), _job(1, data__resolution=64), _job(2, model__name="sd15"), _job(3),
            _job(4, concept__train_data_dir="/other"), _job(5, hardware__mixed_precision="bf16")]
    packs = plan(jobs, max_jobs=8)
    assert packs == [[0, 3], [1], [2], [4], [5]]
    assert describe_plan(packs, jobs).startswith("packed 6 jobs into 5 packs (pack 0: jobs #0, #3; pack 1: jobs #1;")


def test_the_pack_size_limit_and_fp16_jobs_alone():
    assert plan([_job(i) for i in range(5)], max_jobs=2) == [[0, 1], [2, 3], [4]]
    fp16 = [_job(i, hardware__mixed_precision="fp16") for i in range(2)]
    assert plan(fp16, max_jobs=8) == [[0], [1]]  # one loss scaler per job: not packed
    with pytest.raises(TIError, match="max_jobs=0"):
        plan([_job(0)], max_jobs=0)
