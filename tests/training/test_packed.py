"""Packed training: jobs that train together draw, lose and end as they do alone."""

from __future__ import annotations

import json

import pytest
import torch

from ti_experiments.experiment import run
from ti_experiments.records.run_dir import read_embedding
from ti_experiments.training import loop, loss, packed
from ti_experiments.training.packed import Pack

from conftest import TINY_RUN, compose

pytestmark = pytest.mark.train

JOBS = [  # what a sweep varies: learning rate, num_vectors, seed, max_steps, initializer
    ["optimizer.lr=1e-3", "train.max_steps=20"],
    ["optimizer.lr=5e-3", "concept.num_vectors=2", "seed=1", "train.max_steps=20"],
    ["train.max_steps=12", "concept.initializer_token=toy", "lr_scheduler=cosine"],
]
RUN = [*TINY_RUN, "train.batch_size=2", "train.save_steps=0", "train.checkpointing_steps=0"]


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _recording(monkeypatch):
    """Every draw (by the items' seeds) and every batch (by job) the training steps use."""
    draws, batches = {}, {}
    original = loss.item_draws

    def item_draws(seeds, *args):
        out = original(seeds, *args)
        draws.setdefault(tuple(seeds.tolist()), []).append(out)
        return out

    monkeypatch.setattr(loss, "item_draws", item_draws)  # packed and alone draw through loss.training_inputs
    solo_loss, packed_loss = loop.denoising_loss, packed.Slot.loss

    def solo(parts, text_encoder, cache, batch, *args):
        batches.setdefault(("solo", str(cache_owner[0])), []).append(batch)
        return solo_loss(parts, text_encoder, cache, batch, *args)

    def in_pack(self, request):
        batches.setdefault(("pack", self.index), []).append(request.batch)
        return packed_loss(self, request)

    cache_owner = [None]
    monkeypatch.setattr(loop, "denoising_loss", solo)
    monkeypatch.setattr(packed.Slot, "loss", in_pack)
    return draws, batches, cache_owner


def test_packed_jobs_draw_what_they_draw_alone_and_their_losses_match(tmp_path, monkeypatch):
    draws, batches, owner = _recording(monkeypatch)
    alone = []
    for i, job in enumerate(JOBS):
        owner[0] = i
        alone.append(run(compose(*RUN, *job, output_dir=tmp_path / f"alone-{i}")))
    solo_draws = {k: v[0] for k, v in draws.items()}
    draws.clear()

    pack = Pack([str(i) for i in range(len(JOBS))])
    results = pack.run([lambda i=i, job=job: run(compose(*RUN, *job, output_dir=tmp_path / f"packed-{i}"))
                        for i, job in enumerate(JOBS)])
    assert results == [tmp_path / f"packed-{i}" for i in range(len(JOBS))]

    # the same items in the same order, with the same prompts, flips and images; the same draws for each
    for i in range(len(JOBS)):
        a, b = batches[("solo", str(i))], batches[("pack", i)]
        assert len(a) == len(b) == (20 if i < 2 else 12)
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            assert all(torch.equal(x[k], y[k]) for k in x)
    assert draws.keys() == solo_draws.keys()
    for key, calls in draws.items():
        assert all(torch.equal(a, b) for call in calls for a, b in zip(call, solo_draws[key]))

    for i, job in enumerate(JOBS):
        a, b = _metrics(alone[i]), _metrics(tmp_path / f"packed-{i}")
        assert [r["step"] for r in a] == [r["step"] for r in b]
        assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) < 1e-4
        record = json.loads((tmp_path / f"packed-{i}" / "run.json").read_text())
        assert record["status"] == "completed"
        assert record["packed"] == {"pack": "pack", "size": 3, "job": str(i), "with": ["0", "1", "2"]}
        assert "packed" not in json.loads((alone[i] / "run.json").read_text())
        # the embedding is saved under the job's own token, with its own number of vectors
        mine, theirs = read_embedding(tmp_path / f"packed-{i}" / "learned_embeds.safetensors"), read_embedding(
            alone[i] / "learned_embeds.safetensors")
        assert mine.token == theirs.token == "<demo-toy>"
        assert mine.vectors[0].shape == theirs.vectors[0].shape
        assert torch.allclose(mine.vectors[0], theirs.vectors[0], atol=1e-4)


def test_a_job_whose_loss_is_not_finite_stops_alone(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Pack._losses

    def nan_for_the_second_job(self, requests):
        losses = original(self, requests)
        calls["n"] += 1
        if calls["n"] >= 3 and len(requests) == 3:  # until the second job has left the pack
            losses[1] = losses[1] * float("nan")
        return losses

    monkeypatch.setattr(Pack, "_losses", nan_for_the_second_job)
    jobs = [["seed=0"], ["seed=1"], ["seed=2"]]
    pack = Pack(["0", "1", "2"])
    results = pack.run([lambda i=i, job=job: run(compose(*RUN, *job, output_dir=tmp_path / str(i)))
                        for i, job in enumerate(jobs)])
    assert isinstance(results[1], Exception) and "the loss became nan at step 3" in str(results[1])
    status = [json.loads((tmp_path / str(i) / "run.json").read_text())["status"] for i in range(3)]
    assert status == ["completed", "failed", "completed"]
    assert [len(_metrics(tmp_path / str(i))) for i in (0, 2)] == [4, 4]


def test_a_packed_job_gets_its_own_token_rows_and_leaves_the_model_as_it_was(tmp_path):
    from ti_experiments.config import build

    built = []

    def load():
        built.append(build(compose(*RUN).model))
        return built[-1]

    pack = Pack(["0", "1"])
    one, two = pack.parts_for(load, channels_last=False), pack.parts_for(load, channels_last=False)
    assert len(built) == 1 and one.unet is two.unet is built[0].unet
    vocab = len(built[0].tokenizer)
    from ti_experiments.models.embeddings import add_placeholder_tokens

    e1 = add_placeholder_tokens(one.tokenizer, one.text_encoder, "<x>", "toy", 1)
    e2 = add_placeholder_tokens(two.tokenizer, two.text_encoder, "<x>", "cat", 3)
    assert e1.first_id == e2.first_id == vocab  # the ids each job gets alone
    assert (e1.num_embeddings, e2.num_embeddings) == (vocab + 1, vocab + 3)
    assert len(built[0].tokenizer) == vocab
    assert built[0].text_encoder.get_input_embeddings().num_embeddings == vocab
    shared = [n for n, p in one.text_encoder.named_parameters() if "token_embedding" not in n]
    assert shared and all(dict(one.text_encoder.named_parameters())[n] is p
                          for n, p in built[0].text_encoder.named_parameters() if n in shared)


def test_a_stop_request_checkpoints_every_job_and_each_resumes_packed_or_alone(tmp_path, monkeypatch):
    import signal

    from ti_experiments.errors import Interrupted

    run_ = [*RUN, "train.max_steps=6"]
    jobs = [["seed=0"], ["seed=1", "concept.num_vectors=2"]]

    def packed_run(root, *extra):
        pack = Pack(["0", "1"])
        return pack.run([lambda i=i, job=job: run(compose(*run_, *job, *extra, output_dir=root / str(i)))
                         for i, job in enumerate(jobs)])

    assert all(isinstance(r, type(tmp_path)) for r in packed_run(tmp_path / "through"))

    original = loop.EndOfStep.__call__

    def stop_at_step_2(self, lr):
        if self.state.global_step == 2:
            packed.current().pack.stop.signum = signal.SIGTERM  # what the main thread's handler records
        return original(self, lr)

    monkeypatch.setattr(loop.EndOfStep, "__call__", stop_at_step_2)
    results = packed_run(tmp_path / "stopped")
    monkeypatch.setattr(loop.EndOfStep, "__call__", original)
    assert all(isinstance(r, Interrupted) for r in results)
    for i in range(2):
        folder = tmp_path / "stopped" / str(i)
        assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"
        assert (folder / "checkpoint-2").is_dir()
    alone = tmp_path / "stopped-alone"
    import shutil

    shutil.copytree(tmp_path / "stopped" / "1", alone / "1")
    assert all(isinstance(r, type(tmp_path)) for r in packed_run(tmp_path / "stopped",
                                                                   "train.resume_from_checkpoint=latest"))
    run(compose(*run_, *jobs[1], "train.resume_from_checkpoint=latest", output_dir=alone / "1"))

    def vectors(folder):
        return read_embedding(folder / "learned_embeds.safetensors").vectors[0]

    for i in range(2):  # a resumed pack continues exactly where the uninterrupted one went
        assert torch.equal(vectors(tmp_path / "stopped" / str(i)), vectors(tmp_path / "through" / str(i)))
        a, b = _metrics(tmp_path / "stopped" / str(i)), _metrics(tmp_path / "through" / str(i))
        assert [r["loss"] for r in a] == [r["loss"] for r in b]
    # one job resumed on its own: the same steps, up to the batched kernels' rounding
    assert torch.allclose(vectors(alone / "1"), vectors(tmp_path / "through" / "1"), atol=1e-4)
