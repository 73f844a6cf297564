"""Publishing to the Hub: the model card and the file list from a finished run (no upload), the check
before training (offline, no token, read-only token), and a token that never reaches a file of the run."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import yaml

import ti_experiments.publish as publish
from conftest import TINY_RUN, compose, run_cli
from ti_experiments.errors import TIError
from ti_experiments.experiment import run
from ti_experiments.records.run_dir import load_finished_run

pytestmark = pytest.mark.train  # trains the tiny model in-process: seconds each

SECRET = "hf_" + "testTOKENthatMUSTneverBEwritten0123"[::-1][::-1]  # built at run time: a diff of this file never holds it


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_path):
    out = tmp_path_factory.mktemp("published")
    return run(compose(*TINY_RUN, "validation.enabled=true", "validation.steps=null", "validation.num_images=2",
                       "validation.num_inference_steps=2", output_dir=out / "run"))


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would be sent."""

    def __init__(self, role="write"):
        self.role = role
        self.calls = []

    def whoami(self, token):
        self.calls.append(("whoami", token))
        return {"name": "me", "auth": {"accessToken": {"role": self.role}}}

    def create_repo(self, repo_id, token, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private))

    def create_commit(self, repo_id, operations, commit_message, token):
        self.calls.append(("create_commit", repo_id, [op.path_in_repo for op in operations]))
        self.operations = operations
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


def test_card_and_file_list_of_a_finished_run(finished_run):
    done = load_finished_run(finished_run)
    config, summary = done.config, done.summary
    files = publish.files_to_upload(finished_run, config, num_training_images=2)
    dests = [d for _, d in files]
    assert dests[:5] == ["learned_embeds.safetensors", "demo-toy.safetensors", "token_identifier.txt",
                         "type_of_concept.txt", "learned_embeds-best.safetensors"]
    assert dests[5:] == ["concept_images/demo-00.png", "concept_images/demo-01.png",
                         "validation_images/00-00.png", "validation_images/00-01.png"]
    assert all(local.is_file() for local, _ in files)
    card = publish.build_model_card(finished_run, config, summary, "me/demo-toy")
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "creativeml-openrail-m" and "textual_inversion" in front["tags"]
    assert "base_model" not in front  # the tiny model is a local folder, not a Hub model
    assert 'pipe.load_textual_inversion("me/demo-toy")' in card and 'pipe("a photo of a <demo-toy>")' in card
    assert "`demo-toy.safetensors`" in card and "`<demo-toy>` / 1 x 32" in card
    assert "| steps | 4 |" in card and f"| final loss | {summary['final_loss']:.4g} |" in card
    assert "| training images | 6 |" in card
    assert "![training image](concept_images/demo-00.png)" in card
    assert "## Validation images (step 4)" in card and "![validation image](validation_images/00-01.png)" in card


def test_a_hub_base_model_is_named_in_the_card(finished_run):
    done = load_finished_run(finished_run)
    config, summary = done.config, done.summary
    config["model"]["pretrained_model_name_or_path"] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    card = publish.build_model_card(finished_run, config, summary)
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert 'from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5"' in card


def test_push_fails_at_the_start_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)  # HF_HUB_OFFLINE=1 is set for every test
    with pytest.raises(TIError, match="cannot reach the Hugging Face Hub"):
        run(compose(*TINY_RUN, "hub.push=true", output_dir=tmp_path))
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "learned_embeds.safetensors").exists()  # nothing was trained
    assert not any(SECRET in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


def test_push_fails_at_the_start_without_a_token(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(TIError, match="no Hugging Face token was found; fix: set HF_TOKEN"):
        run(compose(*TINY_RUN, "hub.push=true", output_dir=tmp_path / "run"))


@pytest.mark.parametrize("role,message", [("read", "read-only")])
def test_a_read_only_token_is_refused(monkeypatch, role, message):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(publish, "_api", lambda: FakeHub(role=role))
    with pytest.raises(TIError, match=message):
        publish.check_can_push(publish.HubSettings(push=True), "<x>")


def test_a_pushed_run_uploads_everything_and_never_writes_the_token(tmp_path, monkeypatch, caplog):
    hub = FakeHub()
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(publish, "_api", lambda: hub)
    with caplog.at_level(logging.DEBUG):
        run_dir = run(compose(*TINY_RUN, "hub.push=true", "hub.num_training_images=1", output_dir=tmp_path))
    assert [c[0] for c in hub.calls] == ["whoami", "create_repo", "create_repo", "create_commit"]
    assert hub.calls[0] == ("whoami", SECRET) and hub.calls[1] == ("create_repo", "me/demo-toy", True)
    assert hub.calls[-1][2] == ["learned_embeds.safetensors", "demo-toy.safetensors", "token_identifier.txt",
                                "type_of_concept.txt", "learned_embeds-best.safetensors", "concept_images/demo-00.png", "README.md"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["hub"]["repo_id"] == "me/demo-toy"
    assert (run_dir / "model_card.md").read_text().startswith("---\nlicense:")
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in caplog.text


def test_publish_command_dry_run_and_errors(finished_run, tmp_path, capsys):
    assert publish.main([str(finished_run), "--dry-run", "--repo-id", "me/thing"]) == 0
    listing = capsys.readouterr().out
    assert "learned_embeds.safetensors\t<- " in listing and "README.md\t<- " in listing
    assert 'load_textual_inversion("me/thing")' in (finished_run / "model_card.md").read_text()
    assert publish.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a finished run" in err and err.count("\n") == 1


@pytest.mark.slow
def test_the_command_line_fails_in_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    result = run_cli(*TINY_RUN, "hub.push=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: hub.push=true but no Hugging Face token")
    assert not (tmp_path / "run" / "learned_embeds.safetensors").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"push": "yes"}, "hub.push='yes' is not true or false"),
    ({"repo_id": "me/two words"}, "is not a Hub repository name"),
    ({"num_training_images": -1}, "hub.num_training_images=-1 is not an integer >= 0"),
])
def test_bad_hub_settings_are_refused(kwargs, message):
    with pytest.raises(TIError, match=message):
        publish.HubSettings(**kwargs)


def test_an_sdxl_card_loads_both_encoders_and_lists_both_files(tmp_path):
    import torch

    from ti_experiments.models.embeddings import save_learned_embeds, save_sdxl
    from ti_experiments.publish import build_model_card, files_to_upload

    save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<x>", torch.zeros(1, 32))
    save_learned_embeds(tmp_path / "learned_embeds_2.safetensors", "<x>", torch.zeros(1, 64))
    save_sdxl(tmp_path / "x.safetensors", torch.zeros(1, 32), torch.zeros(1, 64))
    (tmp_path / "token_identifier.txt").write_text("<x>")
    (tmp_path / "type_of_concept.txt").write_text("object")
    config = {"concept": {"placeholder_token": "<x>", "initializer_token": "toy"},
              "model": {"pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0"}}
    card = build_model_card(tmp_path, config, {"final_loss": 0.1, "heldout_loss": 0.2}, repo_id="me/x")
    assert "StableDiffusionXLPipeline.from_pretrained" in card
    assert 'weight_name="learned_embeds_2.safetensors", text_encoder=pipe.text_encoder_2' in card
    assert "`clip_l` and `clip_g`" in card and "heldout_loss" in card
    assert {dest for _, dest in files_to_upload(tmp_path, config)} >= {
        "learned_embeds.safetensors", "learned_embeds_2.safetensors", "x.safetensors"}


def test_the_check_before_a_push_answers_within_15_s_when_the_hub_never_does(monkeypatch, silent_server):
    import time

    from huggingface_hub import HfApi, constants

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once, at import: the suite runs offline
    monkeypatch.setattr(publish, "_api", lambda: HfApi(endpoint=silent_server))
    started = time.perf_counter()
    with pytest.raises(TIError, match=r"^cannot reach the Hugging Face Hub \(no answer within 8 s\); fix: "):
        publish.check_can_push(publish.HubSettings(push=True), "<demo-toy>")
    assert time.perf_counter() - started < 15
