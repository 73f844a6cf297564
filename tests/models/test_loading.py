"""A local model folder that lacks a part is refused with one line that names the part."""

from __future__ import annotations

import shutil

import pytest

from ti_experiments.errors import TIError
from ti_experiments.models.loading import REQUIRED_SUBFOLDERS, load_components


@pytest.fixture()
def model_copy(tiny_model_path, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_path, copy)
    return copy


@pytest.mark.parametrize("part", REQUIRED_SUBFOLDERS)
def test_a_missing_component_folder_is_named(model_copy, part):
    shutil.rmtree(model_copy / part)
    with pytest.raises(TIError, match=rf"lacks {part}/") as err:
        load_components(str(model_copy))
    assert "model.pretrained_model_name_or_path" in err.value.fix


@pytest.mark.parametrize("part", ["text_encoder", "vae"])
def test_missing_weights_are_one_clear_error(model_copy, part):
    for weights in (model_copy / part).glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(TIError, match="could not load the model folder"):
        load_components(str(model_copy))


def test_missing_unet_weights_fail_clearly_when_the_unet_is_needed(model_copy):
    for weights in (model_copy / "unet").glob("*.safetensors"):
        weights.unlink()
    parts = load_components(str(model_copy))  # the UNet loads after the latent cache is built
    with pytest.raises(TIError, match="could not load the UNet"):
        parts.unet  # noqa: B018


def _pickles_only(folder, part, marker):
    """`part`'s safetensors weights replaced by a PyTorch pickle that, if loaded, touches `marker`."""
    import pickle

    from conftest import Payload

    for weights in (folder / part).glob("*.safetensors"):
        weights.unlink()
    name = "pytorch_model.bin" if part.startswith("text_encoder") else "diffusion_pytorch_model.bin"
    (folder / part / name).write_bytes(pickle.dumps(Payload(marker)))


@pytest.mark.parametrize("part", ["text_encoder", "unet", "vae"])
def test_a_folder_of_pickled_weights_is_refused_unopened(model_copy, tmp_path, part):
    from ti_experiments.models.loading import load_pipeline

    marker = tmp_path / "pwned"
    _pickles_only(model_copy, part, marker)
    for load, setting in ((load_components, "model.pretrained_model_name_or_path"), (load_pipeline, "--model")):
        with pytest.raises(TIError, match=rf"{setting} .* has only PyTorch pickle weights \({part}/") as err:
            load(str(model_copy))
        assert "save_pretrained" in err.value.fix and f"{model_copy}-safetensors" in err.value.fix
    assert not marker.exists()


def test_pickles_beside_safetensors_are_ignored(model_copy, tmp_path):
    """An export that carries both (diffusers used to write both) loads from its safetensors."""
    import pickle

    from conftest import Payload

    marker = tmp_path / "pwned"
    (model_copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    load_components(str(model_copy)).unet  # noqa: B018
    assert not marker.exists()
