"""Packed training: the jobs of a sweep that share a model train together, on one copy of it.

Each job runs its own code, unchanged, in its own thread: run directory, run.json, tracker, evaluation,
checkpoints and embeddings, as if alone. Only one of those threads runs at a time (`Pack.run` hands
the turn round), so nothing global is ever shared mid-change. A job runs until it needs a micro-step's
loss, hands its batch in (`Slot.loss`) and waits; once every job has handed one in, one forward and
backward pass over all of them gives each job its own loss and the gradients of its own rows only.

What a job owns: its tokenizer (a copy: its placeholder gets the same ids it gets alone) and a text
encoder object that shares every layer with the model but its token embedding (`share_layers`);
the UNet, VAE and latent cache are the pack's. Each item's draws come from the item's own seed
(`loss.item_draws`), so a packed job draws exactly what it draws alone.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .loss import item_losses, training_inputs, weighted_mean
from .signals import StopRequests

_local = threading.local()


def current() -> Slot | None:
    """The pack slot of the job running in this thread (None: the job runs alone)."""
    return getattr(_local, "slot", None)


def share_layers(encoder: nn.Module) -> nn.Module:
    """A text encoder object that shares every layer of `encoder` except its token embedding module, which
    it can replace (and resize) on its own: the modules on the path to that lookup are shallow copies."""
    target = encoder.get_input_embeddings()
    path = next(name for name, m in encoder.named_modules() if m is target).split(".")
    top = node = _shallow(encoder)
    for name in path[:-1]:
        child = _shallow(node._modules[name])
        node._modules[name] = child
        node = child
    lookup = _shallow(target)  # its own weight Parameter too: a resize swaps the Parameter's data in place
    lookup._parameters = {k: nn.Parameter(p.detach(), requires_grad=False) for k, p in target._parameters.items()}
    node._modules[path[-1]] = lookup
    top.config = copy.copy(encoder.config)  # a resize writes the vocabulary size into it
    return top


def _shallow(module: nn.Module) -> nn.Module:
    new = copy.copy(module)
    new._modules = dict(module._modules)
    return new


class PackLookup(nn.Module):
    """The token lookup of a packed batch: each job's rows looked up by that job's own embedding."""

    def __init__(self, template: nn.Module):
        super().__init__()
        self.template = template  # the model's own lookup: its weight and sizes for code that reads them
        self.parts: list[tuple[nn.Module, int]] = []

    @property
    def weight(self) -> torch.Tensor:
        return self.template.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        chunks = input_ids.split([n for _, n in self.parts])
        return torch.cat([embedding(ids) for (embedding, _), ids in zip(self.parts, chunks)])


@dataclass
class Request:
    """One job's micro-batch, and what its loss needs: its embeddings (one per text encoder), its
    accelerator (autocast and backward), the latent cache, the placement, and its accumulation."""

    batch: dict
    embeddings: list
    accelerator: Any
    cache: Any
    placement: Any
    accumulation: int
    snr_gamma: float | None = None  # the job's loss weighting (train.snr_gamma)


class Slot:
    """One job's place in a pack: the turn it waits for, and the batch it hands in."""

    def __init__(self, pack: Pack, index: int):
        self.pack, self.index = pack, index
        self.go, self.back = threading.Semaphore(0), threading.Semaphore(0)
        self.request: Request | None = None
        self.result: torch.Tensor | BaseException | None = None
        self.done = False

    def loss(self, request: Request) -> torch.Tensor:
        """This job's loss of the micro-batch; its rows' gradients are accumulated when this returns."""
        self.request = request
        self.back.release()  # the turn goes round; the pack's step runs when every job has handed in
        self.go.acquire()
        result, self.result = self.result, None
        if isinstance(result, BaseException):
            raise result
        return result


class Pack:
    """The jobs of one pack, the model and latent cache they share, and the steps over all of them."""

    def __init__(self, members: list[str], name: str = "pack"):
        self.members, self.name = list(members), name  # how run.json names the pack and its jobs
        self.slots = [Slot(self, i) for i in range(len(members))]
        self.parts = None  # the model as loaded (SDComponents), shared
        self.cache = None
        self.stop = StopRequests()
        self._packed_parts = None
        self._lookups: list[PackLookup] = []

    def describe(self, index: int) -> dict:
        """What a job's run.json says about its pack."""
        return {"pack": self.name, "size": len(self.members), "job": self.members[index], "with": self.members}

    def parts_for(self, build: Callable[[], Any], channels_last: bool):
        """This job's view of the model: its own tokenizers and token embeddings, every other part shared.
        The first job loads the model (the UNet too: every job uses the same one)."""
        if self.parts is None:
            self.parts = build()
            self.parts.load_unet(channels_last=channels_last)
        view = copy.copy(self.parts)
        view.tokenizers = [copy.deepcopy(tokenizer) for tokenizer in self.parts.tokenizers]
        view.text_encoders = [share_layers(encoder) for encoder in self.parts.text_encoders]
        return view

    def cache_for(self, make: Callable[[], Any]):
        """The latent cache: made by the first job that trains, shared by all (same images, same VAE)."""
        if self.cache is None:
            self.cache = make()
        return self.cache

    def run(self, jobs: list[Callable[[], Any]], before_turn: Callable[[int], None] = lambda i: None) -> list:
        """Run every job to its end, one thread each, one at a time; returns each job's return value (or the
        exception it raised). `before_turn(i)` runs before job i gets its turn (the caller's per-job context)."""
        results: list = [None] * len(jobs)

        def body(slot: Slot, job: Callable[[], Any]) -> None:
            _local.slot = slot
            slot.go.acquire()
            try:
                results[slot.index] = job()
            except BaseException as exc:  # noqa: BLE001 - the job's own end; it is the caller's to report
                results[slot.index] = exc
            finally:
                slot.done = True
                slot.back.release()

        threads = [threading.Thread(target=body, args=(s, j), name=f"pack-job-{s.index}", daemon=True)
                   for s, j in zip(self.slots, jobs)]
        for t in threads:
            t.start()
        with self.stop:
            while live := [s for s in self.slots if not s.done]:
                for slot in live:
                    before_turn(slot.index)
                    slot.go.release()
                    slot.back.acquire()
                waiting = [s for s in self.slots if s.request is not None]
                if waiting:
                    self._step(waiting)
        for t in threads:
            t.join()
        return results

    def _packed_view(self):
        """The model with every text encoder's lookup replaced by a `PackLookup` (made once)."""
        if self._packed_parts is None:
            view = copy.copy(self.parts)
            encoders = []
            for encoder in self.parts.text_encoders:
                shared = share_layers(encoder)
                lookup = PackLookup(encoder.get_input_embeddings())
                shared.set_input_embeddings(lookup)
                encoders.append(shared)
                self._lookups.append(lookup)
            view.text_encoders = encoders
            self._packed_parts = view
        return self._packed_parts

    def _step(self, slots: list[Slot]) -> None:
        """One forward and backward over every waiting job's micro-batch; each job gets its own loss. A job
        whose loss is not finite adds nothing to the backward: its own loop then stops it, alone."""
        requests = [s.request for s in slots]
        for s in slots:
            s.request = None
        try:
            losses = self._losses(requests)
            kept = [loss / r.accumulation for loss, r in zip(losses, requests) if torch.isfinite(loss)]
            if kept:
                requests[0].accelerator.backward(torch.stack(kept).sum())
            for slot, loss in zip(slots, losses):
                slot.result = loss.detach()
        except Exception as exc:  # noqa: BLE001 - every job of the step gets the error in its own thread
            for slot in slots:
                slot.result = exc

    def _losses(self, requests: list[Request]) -> list[torch.Tensor]:
        first = requests[0]
        dtype, device = first.placement.weight_dtype, first.placement.device
        parts = self._packed_view()
        latents, noises, steps = zip(*(training_inputs(parts, r.cache, r.batch, dtype, device) for r in requests))
        sizes = [len(t) for t in steps]
        # the model's fields of every job's items (token ids, image conditioning): all but the loop's own
        batch = {k: torch.cat([r.batch[k] for r in requests]) for k in first.batch
                 if k not in ("image_index", "flipped", "seed")}
        for i, lookup in enumerate(self._lookups):
            lookup.parts = [(r.embeddings[i], n) for r, n in zip(requests, sizes)]
        try:
            with first.accelerator.autocast():
                per_item = item_losses(parts, parts.text_encoder, torch.cat(latents), torch.cat(noises),
                                       torch.cat(steps), batch, dtype, device)
        finally:
            for lookup in self._lookups:
                lookup.parts = []
        return [weighted_mean(parts.noise_scheduler, chunk, t, r.snr_gamma)
                for chunk, t, r in zip(per_item.split(sizes), steps, requests)]
