"""A received .pt/.bin is read as data: the same values torch.load gives, and nothing in it ever runs."""

import subprocess
import sys
import zipfile

import pytest
import torch

from conftest import Payload
from ti_experiments.errors import TIError
from ti_experiments.models.embeddings import read_embedding_file
from ti_experiments.models.torch_files import NotData, read_torch_file


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.detach(), b.detach())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


ROWS = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
SAVED = {
    "a1111": {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(ROWS.clone())},
              "name": "x", "step": 3, "sd_checkpoint": None, "sd_checkpoint_name": "m"},
    "requires_grad": {"string_to_param": {"*": ROWS.clone().requires_grad_()}},
    "diffusers": {"<t>": ROWS[0].clone()},
    "half": {"<t>": ROWS.half()},
    "bfloat16": {"<t>": ROWS.bfloat16()},
    "view": {"<t>": torch.arange(32.0).reshape(4, 8)[1:3, ::2]},
    "shared_buffer": {"a": ROWS, "b": ROWS[1]},
    "containers": {"x": [1, 2.5, None, True, "s", (1, 2)], "y": {"z": torch.arange(5)}, "empty": torch.zeros(0)},
}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_reads_what_torch_load_reads(tmp_path, name):
    path = tmp_path / "e.pt"
    torch.save(SAVED[name], path)
    assert _same(torch.load(path, weights_only=True), read_torch_file(path))


def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    inside = tmp_path / "inside.pt"  # torch.save of a dict that also carries the payload
    torch.save({"emb_params": ROWS, "extra": Payload(marker)}, inside)
    bare = tmp_path / "bare.bin"  # a zip laid out as torch's, whose data.pkl is only the payload
    with zipfile.ZipFile(bare, "w") as archive:
        import pickle

        archive.writestr("archive/data.pkl", pickle.dumps(Payload(marker)))
    for path in (inside, bare):
        with pytest.raises(TIError, match=r"not a readable embedding file \(NotData: it names posix.system"):
            read_embedding_file(path)
    assert not marker.exists()


def test_a_broken_or_oversized_buffer_is_refused(tmp_path, monkeypatch):
    import ti_experiments.models.torch_files as torch_files

    cut = tmp_path / "cut.pt"
    torch.save({"<t>": ROWS}, cut)
    with zipfile.ZipFile(cut) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    buffer = next(name for name in entries if "/data/" in name)
    entries[buffer] = entries[buffer][:-4]
    with zipfile.ZipFile(cut, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(NotData, match="wrong size"):
        read_torch_file(cut)
    repeated = tmp_path / "repeated.pt"  # one float repeated by a zero stride: small on disk, large in memory
    torch.save({"<t>": torch.ones(1).expand(4096)}, repeated)
    monkeypatch.setattr(torch_files, "MAX_TENSOR_BYTES", 1024)
    with pytest.raises(NotData, match="more than an embedding holds"):
        read_torch_file(repeated)


def test_an_old_format_is_refused_with_a_conversion_that_works(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"string_to_param": {"*": ROWS}, "name": "old"}, old, _use_new_zipfile_serialization=False)
    with pytest.raises(TIError, match="not a torch.save zip") as refused:
        read_embedding_file(old)
    command = str(refused.value).split("converts once with: ", 1)[1]
    assert command.startswith("python -c ")
    run = subprocess.run(command.replace("python", sys.executable, 1), shell=True, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    converted = read_embedding_file(old.with_suffix(".safetensors"))
    assert converted.format == "a1111" and torch.equal(converted.vectors[0], ROWS)
    again = subprocess.run(command.replace("python", sys.executable, 1), shell=True, capture_output=True, text=True)
    assert again.returncode != 0 and "File exists" in again.stderr  # never over a file the user has
