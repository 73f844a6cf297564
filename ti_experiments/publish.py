"""Publishing a concept to the Hugging Face Hub: files, a model card, and a check before training starts.

`hub.push=true` checks the token and the network and creates the repository BEFORE training (so a run never
trains for an hour to fail at the upload), and uploads at the end. `python -m ti_experiments.publish RUN_DIR`
publishes a finished run later (`--dry-run`: write the card, list the files, upload nothing).

The token comes from huggingface_hub (`HF_TOKEN`, or the one `hf auth login` stored); it is never a config
value, so it cannot reach a config dump, run.json, a log or a tracker.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from .records import run_dir as run_files
from .errors import ArgumentParser, TIError, report_or_raise
from .records.files import write_text_atomic
from .records.network import with_deadline
from .records.run_dir import CARD as CARD_FILE
from .records.run_dir import a1111_name
from .config.settings import Settings, bound

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")


@dataclass
class HubSettings(Settings):
    """The `hub` config group."""

    GROUP = "hub"

    push: bool = False
    repo_id: str | None = bound(None, example="me/cat-toy")
    private: bool = True
    license: str = bound("creativeml-openrail-m", example="creativeml-openrail-m")
    num_training_images: int = bound(4, minimum=0, example="4")

    def __post_init__(self):
        super().__post_init__()
        if self.repo_id is not None and not _REPO_ID.match(self.repo_id):
            raise TIError(f"hub.repo_id={self.repo_id!r} is not a Hub repository name",
                          "use NAME or USER/NAME (letters, digits, '-', '_', '.')")


def _api():
    from huggingface_hub import HfApi

    return HfApi()


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise TIError("hub.push=true but no Hugging Face token was found",
                      "set HF_TOKEN or log in once with `hf auth login` (or set hub.push=false)")
    return token


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else exc.__class__.__name__


def check_can_push(settings: HubSettings, placeholder: str) -> str:
    """Token, network, write access and the repository, before any training; returns the repository id."""
    from huggingface_hub.errors import HfHubHTTPError

    token = _token()
    api = _api()
    try:
        me = with_deadline(lambda: api.whoami(token=token))
    except HfHubHTTPError as exc:
        if getattr(exc.response, "status_code", None) in (401, 403):
            raise TIError("the Hugging Face Hub refused the token (invalid or expired)",
                          "set HF_TOKEN to a valid token with write access, or hub.push=false") from None
        raise TIError(f"cannot reach the Hugging Face Hub ({_first_line(exc)})",
                      "try again later, or set hub.push=false and publish later with "
                      "python -m ti_experiments.publish RUN_DIR") from None
    except Exception as exc:  # noqa: BLE001 - offline mode, DNS, proxy, no answer: the same remedy
        raise TIError(f"cannot reach the Hugging Face Hub ({_first_line(exc)})",
                      "connect to the network (and unset HF_HUB_OFFLINE), or set hub.push=false and publish later "
                      "with python -m ti_experiments.publish RUN_DIR") from None
    if ((me.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise TIError("the Hugging Face token is read-only", "use a token with write access, or hub.push=false")
    name = settings.repo_id or a1111_name(placeholder)
    repo_id = name if "/" in name else f"{me['name']}/{name}"
    try:
        with_deadline(lambda: api.create_repo(repo_id, token=token, private=settings.private, exist_ok=True))
    except Exception as exc:  # noqa: BLE001
        raise TIError(f"cannot create the Hub repository {repo_id} ({_first_line(exc)})",
                      "choose a hub.repo_id in a namespace the token may write to") from None
    log.info("the concept will be published to https://huggingface.co/%s at the end of the run", repo_id)
    return repo_id


# --- what is published ------------------------------------------------------------------------------------


def files_to_upload(run_dir: Path, config: dict, num_training_images: int = 4) -> list[tuple[Path, str]]:
    """(local file, path in the repository): the embeddings in both formats, the sd-concepts text files, the
    first training images and the last validation images (and the card, once written)."""
    run_dir = Path(run_dir)
    placeholder = run_files.read_token(run_dir)
    names = [*run_files.EMBEDDINGS, f"{a1111_name(placeholder)}.safetensors", run_files.TOKEN,
             run_files.CONCEPT_TYPE, run_files.BEST_EMBEDDING]
    files = [(run_dir / n, n) for n in names if (run_dir / n).is_file()]
    train_dir = Path(str((config.get("concept") or {}).get("train_data_dir", ""))).expanduser()
    files += [(p, f"concept_images/{p.name}") for p in run_files.list_images(train_dir)[:num_training_images]]
    _, validation = run_files.last_validation(run_dir)
    files += [(p, f"validation_images/{p.name}") for p in validation]
    if (run_dir / CARD_FILE).is_file():
        files.append((run_dir / CARD_FILE, "README.md"))
    return files


def _hub_id(name) -> str | None:
    """The base model's Hub id; None for a local folder (the tiny model, a fine-tune on disk)."""
    name = str(name or "")
    return name if _REPO_ID.match(name) and "/" in name and not Path(name).expanduser().exists() else None


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _card_settings(config: dict, summary: dict, base: str | None, placeholder: str, kind: str, start: str,
                   shape: str) -> list[tuple]:
    """The model card's "Training settings" rows, from the run's resolved config."""
    model, train, data = config.get("model") or {}, config.get("train") or {}, config.get("data") or {}
    optimizer, hardware = config.get("optimizer") or {}, config.get("hardware") or {}
    settings = [
        ("base model", base or model.get("pretrained_model_name_or_path")),
        ("placeholder / vectors", f"`{placeholder}` / {shape}"),
        ("learnable property", kind), ("started from", start),
        ("training images", summary.get("num_images")),
        ("prompts", {"none": f"{kind} templates", "file": "per-image captions",
                     "filewords": "templates with [filewords] captions"}.get(data.get("captions", "none"))),
        ("resolution", data.get("resolution")), ("steps", train.get("max_steps")),
        ("batch size x gradient accumulation", f"{train.get('batch_size')} x {train.get('gradient_accumulation_steps')}"),
        ("optimizer / learning rate", f"{str(optimizer.get('_target_', '')).split('.')[-1] or 'n/a'} / "
                                      f"{_fmt(optimizer.get('lr'))}{' (scaled by batch x accumulation x processes)' if train.get('scale_lr') else ''}"),
        ("lr scheduler", str((config.get("lr_scheduler") or {}).get("name", "n/a"))),
        ("mixed precision", hardware.get("mixed_precision")), ("seed", config.get("seed")),
    ]
    return settings


def _card_metrics(summary: dict) -> list[tuple]:
    """The model card's "Results" rows: what summary.json holds."""
    metrics = [("final loss", summary.get("final_loss")), ("mean loss, last 10% of steps", summary.get("avg_loss")),
               ("steps", summary.get("steps")), ("training seconds", summary.get("train_seconds")),
               ("steps per second", summary.get("steps_per_sec")),
               ("peak memory (GiB)", summary["peak_memory_bytes"] / 2**30 if summary.get("peak_memory_bytes") else None)]
    metrics += [(k, summary[k]) for k in ("heldout_loss", "heldout_loss_init", "heldout_loss_words", "clip_i", "clip_t", "dino",
                                          "best_metric", "best_step") if summary.get(k) is not None]
    return metrics


def _card_use(run_dir: Path, base: str | None, repo: str, prompt: str, placeholder: str, num_vectors: int,
              width: int) -> list[str]:
    """The model card's "Use it" and "Files" sections: every text encoder of the run's model family gets the
    token (one diffusers file each), and the A1111/ComfyUI file in that family's layout."""
    from .models.loading import family_for_encoders

    family = family_for_encoders(sum((run_dir / name).is_file() for name in run_files.EMBEDDINGS))
    pipeline, a1111 = family.pipeline_class, a1111_name(placeholder)
    others = list(zip(run_files.EMBEDDINGS[1:], family.component_folders[1:]))
    a1111_keys = " and ".join(f"`{key}`" for key in family.a1111_tensors([None] * family.num_encoders))
    return [
        "## Use it", "", "With diffusers:", "", "```python", "import torch",
        f"from diffusers import {pipeline}", "",
        f'pipe = {pipeline}.from_pretrained("{base or "BASE_MODEL"}", torch_dtype=torch.float16).to("cuda")',
        f'pipe.load_textual_inversion("{repo}")',
        *[f'pipe.load_textual_inversion("{repo}", weight_name="{name}", text_encoder=pipe.{encoder}, '
          f"tokenizer=pipe.{tokenizer})" for name, (tokenizer, encoder) in others],
        f'image = pipe("{prompt}").images[0]', "```", "",
        f"With AUTOMATIC1111 or ComfyUI: put `{a1111}.safetensors` into the `embeddings` folder; these tools take the "
        f"word from the file name, so the prompt says `{a1111}` (ComfyUI: `embedding:{a1111}`).", "",
        "## Files", "", "| file | what it is |", "| --- | --- |",
        f"| `learned_embeds.safetensors` | diffusers format: one key, `{placeholder}`, a [{num_vectors}, {width}] fp32 tensor |",
        *[f"| `{name}` | diffusers format for the text encoder `{encoder}` ({family.label}) |"
          for name, (_, encoder) in others],
        f"| `{a1111}.safetensors` | AUTOMATIC1111 / ComfyUI format: "
        f"{'key' if family.num_encoders == 1 else 'keys'} {a1111_keys} |",
    ]


def build_model_card(run_dir: Path, config: dict, summary: dict, repo_id: str | None = None,
                     license: str = "creativeml-openrail-m") -> str:
    """README.md of the Hub repository: front matter, how to load it, the settings that trained it, its metrics."""
    import yaml

    run_dir = Path(run_dir)
    concept, model = config.get("concept") or {}, config.get("model") or {}
    placeholder = run_files.read_token(run_dir)
    kind = run_files.read_concept_type(run_dir) or concept.get("learnable_property", "object")
    base = _hub_id(model.get("pretrained_model_name_or_path"))
    front = {"license": license, **({"base_model": base} if base else {}), "library_name": "diffusers",
             "tags": ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "diffusers",
                      "textual_inversion", "ti-experiments"], "inference": True}
    from safetensors import safe_open

    with safe_open(str(run_dir / run_files.EMBEDDING), "pt") as f:
        num_vectors, width = f.get_slice(next(iter(f.keys()))).get_shape()
    repo = repo_id or "USER/REPO"
    prompt = concept.get("validation_prompt") or (f"a photo of {placeholder}" if kind == "object"
                                                   else f"a house in the style of {placeholder}")
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{model.get('pretrained_model_name_or_path')}`"
    start = (f"the embedding `{concept['init_from']}`" if concept.get("init_from")
             else f"the word `{concept.get('initializer_token')}`")
    settings = _card_settings(config, summary, base, placeholder, kind, start, f"{num_vectors} x {width}")
    metrics = _card_metrics(summary)
    files = files_to_upload(run_dir, config, 10**6)
    training = [dest for _, dest in files if dest.startswith("concept_images/")]
    step, validation = run_files.last_validation(run_dir)
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# Textual inversion: `{placeholder}`", "",
        f"`{placeholder}` is a new word for {'an' if kind == 'object' else 'a'} {kind} concept, taught to {base_text} "
        f"by textual inversion: only its {'token embedding (one vector' if num_vectors == 1 else f'{num_vectors} token embeddings ({num_vectors} vectors'} "
        f"of {width} values) {'was' if num_vectors == 1 else 'were'} trained; the model itself is unchanged.", "",
        *_card_use(run_dir, base, repo, prompt, placeholder, num_vectors, width),
        "| `token_identifier.txt`, `type_of_concept.txt` | the placeholder and the concept type (sd-concepts layout) |",
        "", "## Training settings", "", "| setting | value |", "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in settings], "", "## Results", "", "| metric | value |", "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in metrics], "",
    ]
    if training:
        lines += ["## Training images", "", *[f"![training image]({p})" for p in training[:10]], ""]
    if validation:
        lines += [f"## Validation images (step {step})", "",
                  *[f"![validation image]({'validation_images/' + p.name})" for p in validation], ""]
    lines += ["Trained with ti-experiments (textual inversion with Hydra and Accelerate)."]
    return "\n".join(lines) + "\n"


def publish(run_dir: Path, repo_id: str, settings: HubSettings) -> dict:
    """Write the card into the run directory and upload it with the files in one commit; returns where."""
    from huggingface_hub import CommitOperationAdd

    run_dir = Path(run_dir)
    run = run_files.load_finished_run(run_dir)
    config, summary = run.config, run.summary
    write_text_atomic(run_dir / CARD_FILE, build_model_card(run_dir, config, summary, repo_id, settings.license))
    files = files_to_upload(run_dir, config, settings.num_training_images)
    token = _token()
    api = _api()
    try:
        with_deadline(lambda: api.create_repo(repo_id, token=token, private=settings.private, exist_ok=True))
        info = api.create_commit(
            repo_id, [CommitOperationAdd(path_in_repo=dest, path_or_fileobj=str(local)) for local, dest in files],
            commit_message=f"Textual inversion {summary.get('steps', '')} steps: "
                           f"{run_files.read_token(run_dir)}",
            token=token)
    except Exception as exc:  # noqa: BLE001
        raise TIError(f"the upload to the Hub repository {repo_id} failed ({_first_line(exc)})",
                      f"the run is complete in {run_dir}; upload it again with python -m ti_experiments.publish "
                      f"{run_dir} --repo-id {repo_id}") from None
    url = str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")
    log.info("published %d files to https://huggingface.co/%s", len(files), repo_id)
    return {"repo_id": repo_id, "commit_url": url, "files": [dest for _, dest in files]}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m ti_experiments.publish", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a completed run directory")
    parser.add_argument("--repo-id", default=None, help="NAME or USER/NAME (default: the run's hub.repo_id, else "
                                                        "USER/<placeholder>)")
    parser.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    parser.add_argument("--dry-run", action="store_true", help="write model_card.md and list the files; upload nothing")
    args = parser.parse_args(argv)

    try:
        run = run_files.load_finished_run(args.run_dir)
        config, summary = run.config, run.summary
        known = {f.name for f in fields(HubSettings)}
        hub = {k: v for k, v in (config.get("hub") or {}).items() if k in known}
        settings = HubSettings(**{**hub, "push": True, "repo_id": args.repo_id or hub.get("repo_id"),
                                  **({"private": False} if args.public else {})})
        if args.dry_run:
            write_text_atomic(args.run_dir / CARD_FILE, build_model_card(
                args.run_dir, config, summary, settings.repo_id, settings.license))
            for local, dest in files_to_upload(args.run_dir, config, settings.num_training_images):
                print(f"{dest}\t<- {local}")
            return 0
        result = publish(args.run_dir, check_can_push(settings, run_files.read_token(args.run_dir)), settings)
    except Exception as exc:
        return report_or_raise(exc)
    print(f"published: {result['commit_url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
