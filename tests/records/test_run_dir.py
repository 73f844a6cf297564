"""The run directory's files: names, records, and SDXL's two-encoder step files read as one concept."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ti_experiments.records import run_dir as run_files
from ti_experiments.errors import TIError
from ti_experiments.export import export, main


@pytest.fixture
def sdxl_run(tmp_path):
    """A run directory as an SDXL run leaves it: final concept and two saved steps, both encoders each."""
    torch.manual_seed(0)
    final = [torch.randn(2, 8), torch.randn(2, 12)]
    run_files.write_concept(tmp_path, "<xl-toy>", final, "object", other_tools=True)
    steps = {step: [torch.randn(2, 8), torch.randn(2, 12)] for step in (2, 4)}
    for step, vectors in steps.items():
        run_files.write_step_embedding(tmp_path, step, "<xl-toy>", vectors)
    return tmp_path, final, steps


def test_step_files_pair_both_encoders(sdxl_run):
    run_dir, _, steps = sdxl_run
    assert run_files.saved_steps(run_dir) == [2, 4]
    assert [p.name for p in run_files.step_files(run_dir, 2)] == [
        "learned_embeds-steps-2.safetensors", "learned_embeds_2-steps-2.safetensors"]
    embedding = run_files.read_embedding(run_dir, step=4)
    assert embedding.format == "diffusers-sdxl" and embedding.token == "<xl-toy>"
    assert [v.shape[1] for v in embedding.vectors] == [8, 12]
    assert all(torch.equal(a, b) for a, b in zip(embedding.vectors, steps[4]))
    with pytest.raises(TIError, match="no embedding saved at step 3; fix: use one of --step 2, 4"):
        run_files.read_embedding(run_dir, step=3)


def test_the_final_sdxl_concept_reads_from_the_folder(sdxl_run):
    run_dir, final, _ = sdxl_run
    embedding = run_files.read_embedding(run_dir)
    assert embedding.format == "diffusers-sdxl" and embedding.path == run_dir
    assert [p.name for p in embedding.files] == list(run_files.EMBEDDINGS)
    assert all(torch.equal(a, b) for a, b in zip(embedding.vectors, final))
    assert sorted(load_file(run_dir / "xl-toy.safetensors")) == ["clip_g", "clip_l"]


def test_export_step_of_an_sdxl_run(sdxl_run, tmp_path_factory, capsys):
    run_dir, _, steps = sdxl_run
    out = tmp_path_factory.mktemp("out")
    a1111 = export(run_dir, "a1111", out=out / "xl.safetensors", step=2)
    tensors = load_file(a1111)
    assert torch.equal(tensors["clip_l"], steps[2][0]) and torch.equal(tensors["clip_g"], steps[2][1])
    folder = export(run_dir, "diffusers", out=out / "xl-diffusers", step=2)
    assert sorted(p.name for p in folder.iterdir()) == [*run_files.EMBEDDINGS, run_files.TOKEN, run_files.CONCEPT_TYPE]
    assert main([str(run_dir), "--format", "a1111", "--step", "4"]) == 0
    assert (run_dir / "xl-toy-steps-4.safetensors").is_file()
    assert main([str(run_dir), "--format", "diffusers", "--step", "4", "--out", str(out / "one.safetensors")]) == 2
    assert "two diffusers files" in capsys.readouterr().err


def test_records_read_as_empty_when_missing_or_cut(tmp_path):
    assert run_files.read_summary(tmp_path) == {} and run_files.read_record(tmp_path) == {}
    (tmp_path / run_files.SUMMARY).write_text('{"final_loss": 0.')
    assert run_files.read_summary(tmp_path) == {}
    run_files.write_summary(tmp_path, {"final_loss": 0.5})
    assert run_files.read_summary(tmp_path) == {"final_loss": 0.5}
    run_files.append_metrics(tmp_path, {"step": 2, "loss": 1.0})
    run_files.append_metrics(tmp_path, {"step": 1, "loss": 2.0})
    with open(tmp_path / run_files.METRICS, "a") as f:
        f.write('{"step": 3, "lo')  # a line cut short by a crash
    assert [r["step"] for r in run_files.read_metrics(tmp_path)] == [1, 2]


def test_last_validation_skips_steps_without_images(tmp_path):
    from PIL import Image

    assert run_files.last_validation(tmp_path) == (None, [])
    for step in (10, 2):
        folder = run_files.validation_dir(tmp_path, step)
        folder.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(folder / "00-00.png")
    run_files.validation_dir(tmp_path, 20).mkdir()  # started, no image written yet
    step, images = run_files.last_validation(tmp_path)
    assert step == 10 and [p.name for p in images] == ["00-00.png"]


def test_checkpoints_are_complete_ones_in_step_order(tmp_path):
    for step, complete in ((10, True), (2, True), (30, False)):
        folder = run_files.checkpoint_dir(tmp_path, step)
        folder.mkdir()
        if complete:
            (folder / run_files.CHECKPOINT_STATE).write_text("{}")
    assert [p.name for p in run_files.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def _finished_run(folder, checkpoint: bool = False):
    run_files.write_json(folder / run_files.RECORD, {"status": "completed"})
    run_files.write_concept(folder, "<t>", [torch.zeros(1, 4)])
    if checkpoint:
        (run_files.checkpoint_dir(folder, 2)).mkdir()
        (run_files.checkpoint_dir(folder, 2) / run_files.CHECKPOINT_STATE).write_text("{}")
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("leftover", [run_files.RECORD, run_files.METRICS, run_files.COMPOSED_CONFIG,
                                      "learned_embeds-steps-2.safetensors", "checkpoint-2"])
def test_any_trace_of_a_run_makes_a_folder_taken(tmp_path, leftover):
    assert not run_files.holds_run(tmp_path)
    path = tmp_path / leftover
    path.mkdir(parents=True) if leftover.startswith("checkpoint") else (path.parent.mkdir(exist_ok=True), path.write_text("{}"))
    assert run_files.holds_run(tmp_path)


def test_a_folder_that_holds_a_run_is_refused_unless_the_run_resumes_it(tmp_path):
    before = _finished_run(tmp_path)
    with pytest.raises(TIError, match=rf"^{tmp_path} already holds a run \(run.json: completed\).*no checkpoint"):
        with run_files.claim(tmp_path):
            pass
    with pytest.raises(TIError, match="already holds a run"):  # nothing to resume: still refused
        with run_files.claim(tmp_path, "latest"):
            pass
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before
    _finished_run(tmp_path, checkpoint=True)
    for resume in ("latest", str(tmp_path), str(run_files.checkpoint_dir(tmp_path, 2))):
        with run_files.claim(tmp_path, resume):
            pass
    other = tmp_path.parent / (tmp_path.name + "-other")
    _finished_run(other, checkpoint=True)
    with pytest.raises(TIError, match="train.resume_from_checkpoint=latest"):  # another run's checkpoint
        with run_files.claim(tmp_path, str(run_files.checkpoint_dir(other, 2))):
            pass


def test_a_held_run_folder_is_refused_before_its_contents_are_looked_at(tmp_path):
    with run_files.claim(tmp_path):
        with pytest.raises(TIError, match=r"is in use by a run \(process \d+\); fix: wait for it to end"):
            with run_files.claim(tmp_path):
                pass


# --- a received run folder is data; a folder of the user's is never a run folder -----------------------------

CRAFTED = {
    "nested torch.load": "model:\n  _target_: ti_experiments.models.load_tiny_components\n  extra:\n"
                         "    _target_: torch.load\n    f: payload.pt\n    weights_only: false\n",
    "os.system in _args_": "optimizer:\n  _target_: torch.optim.AdamW\n  _args_:\n    - _target_: os.system\n"
                           "      _args_: ['touch pwned']\n",
    "target by interpolation": "x: os.system\nmodel:\n  _target_: ${x}\n",
    "node made from text": "model: \"${oc.create:'{_target_: os.system}'}\"\n",
    "builtins eval": "lr_scheduler:\n  _target_: builtins.eval\n",
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_config_naming_code_the_project_does_not_ship_is_refused(tmp_path, case):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / run_files.COMPOSED_CONFIG).write_text(CRAFTED[case])
    with pytest.raises(TIError, match=r"(not one of the project's targets|makes a config node from text).*fix: "):
        run_files.read_config(tmp_path)


def test_the_project_s_own_configs_pass_the_check(tmp_path):
    from omegaconf import OmegaConf

    from conftest import compose

    cfg = compose("+concept=demo", "model=tiny", "optimizer=sgd", "lr_scheduler=cosine", "logger=tensorboard",
                  "optimizer._target_=torch.optim.RAdam", output_dir=tmp_path)
    (tmp_path / run_files.RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg))
    assert run_files.read_config(tmp_path, composed=False).optimizer._target_ == "torch.optim.RAdam"


@pytest.mark.parametrize("text", ["model: [unclosed\n", "- just\n- a list\n", "\x00\x01binary"])
def test_a_broken_config_in_a_run_folder_is_one_line(tmp_path, text):
    (tmp_path / run_files.RESOLVED_CONFIG).write_text(text)
    with pytest.raises(TIError, match=r"resolved_config.yaml is not a.*; fix: restore the file"):
        run_files.read_config(tmp_path)


@pytest.mark.parametrize("files", [("learned_embeds.safetensors",), ("token_identifier.txt", "type_of_concept.txt"),
                                   ("learned_embeds.bin",), ("cat-toy.safetensors",), ("notes.txt",), ("photos",)])
def test_a_folder_of_the_users_own_files_is_never_a_run_folder(tmp_path, files):
    for name in files:
        (tmp_path / name).mkdir() if name == "photos" else (tmp_path / name).write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(TIError, match=r"holds (an embedding or concept|files this run did not write).*fix: start "
                                      r"the run in a new folder"):
        with run_files.claim(tmp_path):
            pass
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_link_in_a_run_folder_is_refused_even_on_resume(tmp_path):
    _finished_run(tmp_path, checkpoint=True)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("mine")
    (tmp_path / run_files.METRICS).symlink_to(victim)
    with pytest.raises(TIError, match="metrics.jsonl is a symbolic link"):
        with run_files.claim(tmp_path, "latest"):
            pass
    with pytest.raises(TIError, match="metrics.jsonl is a symbolic link"):
        run_files.append_metrics(tmp_path, {"step": 1})
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("given", ["", "  ", None, "PACKAGE", "CONF"])
def test_an_empty_run_folder_or_one_inside_the_package_is_refused(given):
    from ti_experiments.config import CONF_DIR

    import ti_experiments

    given = {"PACKAGE": str(ti_experiments.__file__).rsplit("/", 1)[0] + "/runs/x",
             "CONF": str(CONF_DIR / "concept" / "mine")}.get(given, given)
    with pytest.raises(TIError, match=r"(is empty|inside the package).*fix: name a"):
        run_files.check_run_folder(given)


def test_a_record_left_running_by_a_dead_run_reads_as_failed(tmp_path):
    run_files.write_json(tmp_path / run_files.RECORD, {"status": "running"})
    assert run_files.read_record(tmp_path)["status"] == "failed"
    from ti_experiments.records.files import folder_lock

    with folder_lock(tmp_path, "a run", "wait"):
        assert run_files.read_record(tmp_path)["status"] == "running"  # held: it is running


def test_the_command_refuses_a_concept_folder_and_an_empty_run_dir_in_one_line(tmp_path):
    from conftest import TINY_RUN, run_cli

    concept = tmp_path / "sd-concept"
    concept.mkdir()
    for name, text in (("token_identifier.txt", "<mine>"), ("type_of_concept.txt", "object")):
        (concept / name).write_text(text)
    done = run_cli(*TINY_RUN, f"hydra.run.dir={concept}")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "holds an embedding or concept" in errors[0], done.stderr
    assert (concept / "token_identifier.txt").read_text() == "<mine>"
    assert sorted(p.name for p in concept.iterdir()) == [".lock", "ti.log", "token_identifier.txt",
                                                          "type_of_concept.txt"]
    here = tmp_path / "cwd"
    here.mkdir()
    done = run_cli(*TINY_RUN, "hydra.run.dir=", cwd=here)
    assert done.returncode == 2 and "hydra.run.dir, paths.output_dir) is empty" in done.stderr, done.stderr
    assert not (here / "run.json").exists() and not (here / "resolved_config.yaml").exists()
