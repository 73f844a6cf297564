"""`python -m ti_experiments.versus EXAMPLE.py [--example-python PY] [--out DIR] +concept=NAME [overrides...]`

Time to quality, side by side: runs this project's training command (the overrides, as a user would type
them) and then the unmodified diffusers example (`examples/textual_inversion/textual_inversion.py`, the
path you give) at the diffusers guide's settings (3000 steps, batch 1 x gradient accumulation 4, lr 5e-4
with --scale_lr, constant schedule) on the same image folder, model, placeholder, initializer word (the
one you name; ours may start from a better one it measured), resolution and seed. Both are timed from
launch to exit. Then both embeddings are scored with the run's own evaluation: the held-out loss on the
same fixed (image, noise, timestep) draws and, where image metrics are on (the toy world's judge; a GPU),
CLIP-I of the same prompts and seeds. From the run's
held-out losses as they were written (watched while it ran), it prints how long after launch this
project first reached the example's final held-out loss (within 2%).

Everything lands in --out (default outputs/versus/DATE/TIME): `ours/` (the run directory), `example/` (the
example's output folder), both logs, and versus.json with every figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import ArgumentParser, TIError, report_or_raise

# the diffusers guide's settings for the example (its README's command, "about 1 hour on one V100")
GUIDE = ("--train_batch_size", "1", "--gradient_accumulation_steps", "4", "--max_train_steps", "3000",
         "--learning_rate", "5.0e-04", "--scale_lr", "--lr_scheduler", "constant", "--lr_warmup_steps", "0")
GUIDE_STEPS = int(GUIDE[GUIDE.index("--max_train_steps") + 1])
# "reached the example's quality": a held-out loss at most this much above the example's final one
WITHIN = 0.02

EXAMPLES = (
    ("python -m ti_experiments.versus textual_inversion.py +concept=demo", "the demo concept, toy world"),
    ("python -m ti_experiments.versus textual_inversion.py +concept=cat_toy model=toyworld "
     "concept.train_data_dir=DIR concept.placeholder_token='<my-thing>' concept.initializer_token=circle",
     "your own folder of images on the toy world, at the project's defaults"),
    ("python -m ti_experiments.versus textual_inversion.py --example-python ../ex-venv/bin/python "
     "+concept=cat_toy", "the example in its own environment (it imports torchvision)"),
)


@dataclass
class Launched:
    """One command timed from the outside, launch to exit; `lines`: each metrics row of the run with the
    seconds since launch at which it appeared."""

    command: list[str]
    log: str
    wall_s: float = 0.0
    exit_code: int | None = None
    lines: list[dict] = field(default_factory=list)


def launch(command: list[str], log: Path, watch: Path | None = None, env: dict | None = None) -> Launched:
    """Run `command` to its end with its output in `log`; while it runs, note when each line of the
    `watch` file (a run's metrics.jsonl) appears."""
    out = Launched(command=command, log=str(log))
    started = time.perf_counter()
    with open(log, "wb") as sink:
        try:
            proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            raise TIError(f"could not start {command[0]!r}: {exc.strerror}",
                          "give an existing Python with --example-python") from None
        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(watch, started, out.lines, done), daemon=True)
        if watch is not None:
            watcher.start()
        out.exit_code = proc.wait()
        out.wall_s = time.perf_counter() - started
        done.set()
        if watch is not None:
            watcher.join()
    return out


def _watch(path: Path, started: float, rows: list[dict], done: threading.Event) -> None:
    """Each complete line of `path` as it appears, with the seconds since `started` (polled 4 times a
    second: the figures it gives are good to about 0.25 s)."""
    offset, partial = 0, b""
    while True:
        finished = done.is_set()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        offset += len(chunk)
        *complete, partial = (partial + chunk).split(b"\n")
        now = time.perf_counter() - started
        rows.extend({**json.loads(line), "since_launch_s": now} for line in complete if line.strip())
        if finished:
            return
        done.wait(0.25)


def example_command(python: str, script: Path, run: dict, out_dir: Path) -> list[str]:
    """The example's command line for the same concept, model and seed as the run, at the guide's settings."""
    concept, model = run["concept"], run["model"]
    return [python, str(script), "--pretrained_model_name_or_path", str(model["pretrained_model_name_or_path"]),
            "--train_data_dir", str(concept["train_data_dir"]), "--placeholder_token", concept["placeholder_token"],
            "--initializer_token", run["initializer"], "--learnable_property", concept["learnable_property"],
            "--num_vectors", str(concept["num_vectors"]), "--resolution", str(run["data"]["resolution"]),
            "--seed", str(run["seed"]), "--mixed_precision", run["hardware"]["mixed_precision"],
            *GUIDE, "--output_dir", str(out_dir)]


def example_output(command: list[str]) -> Path:
    """The example's output folder (its learned_embeds.safetensors and saved steps), from its command line."""
    return Path(command[command.index("--output_dir") + 1])


def check_inputs(script: Path, python: str, out: Path, overrides: list[str]) -> dict:
    """Every input checked before anything runs: the example exists, the output folder is new, and the
    overrides make a run this comparison can repeat with the example (a model folder, one process)."""
    from omegaconf import OmegaConf

    from .config import compose
    from .config.checks import check_config

    if not script.is_file():
        raise TIError(f"{script} is not a file", "give the path of diffusers' examples/textual_inversion/"
                      "textual_inversion.py (git clone https://github.com/huggingface/diffusers)")
    if shutil.which(python) is None:
        raise TIError(f"--example-python {python} is not a file", "give a Python executable, e.g. ../venv/bin/python")
    if out.exists() and (out.is_symlink() or any(out.iterdir())):
        raise TIError(f"{out} already exists and is not empty", "give a new folder with --out")
    for item in overrides:
        if item.startswith(("hydra.run.dir=", "-m", "--multirun")):
            raise TIError(f"{item!r}: versus runs one training into its own folder", "drop it (use --out DIR)")
    if not any(o.startswith("+concept=") for o in overrides):
        raise TIError("no concept given", "add +concept=NAME, e.g. +concept=demo")
    cfg = compose([*overrides, f"paths.output_dir={out / 'ours'}"])
    checked = check_config(cfg)
    if checked.model.random_init:
        raise TIError("model.random_init=true has no weights to learn a concept with",
                      "compare on a trained model: model=toyworld, or model.pretrained_model_name_or_path=FOLDER")
    return OmegaConf.to_container(cfg, resolve=True)


def time_to_reach(lines: list[dict], target: float) -> dict | None:
    """The first held-out loss of the run within WITHIN of `target`: its step and seconds since launch."""
    for row in lines:
        if row.get("heldout_loss") is not None and row["heldout_loss"] <= target * (1 + WITHIN):
            return {"step": row["step"], "since_launch_s": round(row["since_launch_s"], 2),
                    "heldout_loss": row["heldout_loss"]}
    return None


def score_both(run_dir: Path, example_file: Path) -> tuple[dict, dict]:
    """The run's kept embedding and the example's final one, on the run's own held-out draws and prompts."""
    from .evaluate import scoring
    from .records import run_dir as run_files

    with scoring(run_dir) as opened:
        ours, theirs = opened.score([(None, run_dir / run_files.EMBEDDING),
                                     (GUIDE_STEPS, example_file)])
    return ours, theirs


def reused_example(folder: Path, command: list[str]) -> tuple[Launched, Path]:
    """The example's run of an earlier comparison (its wall, its embedding) when it ran the command this
    comparison would run (the Python, the output folder and the seed aside: one example run can stand
    beside runs of ours with several seeds)."""
    from .records import run_dir as run_files

    def same(c: list[str]) -> list[str]:
        seed = c.index("--seed")
        return c[1:seed] + c[seed + 2:-1]

    earlier = run_files.read_json(folder / "versus.json").get("example")
    keys = ("command", "log", "wall_s", "exit_code")
    if not (isinstance(earlier, dict) and all(k in earlier for k in keys) and isinstance(earlier["command"], list)):
        raise TIError(f"{folder} holds no versus.json with the example's run",
                      "give a folder an earlier versus run wrote (its --out), or drop --reuse-example")
    if same([str(c) for c in earlier["command"]]) != same(command):
        raise TIError(f"the example in {folder} ran another concept, model or setting than this run",
                      "compare with a versus folder of the same overrides, or drop --reuse-example")
    return Launched(**{k: earlier[k] for k in keys}), \
        example_output([str(c) for c in earlier["command"]]) / "learned_embeds.safetensors"


def users_word(initializer_token) -> str | None:
    """The word the example starts from: the one a user of the example would give it, the first they name
    (ours may start from another, chosen by the held-out loss); None for `auto`, where it gets ours."""
    if isinstance(initializer_token, (list, tuple)):
        return str(initializer_token[0])
    return None if initializer_token == "auto" else str(initializer_token)


def compare(script: Path, python: str, out: Path, overrides: list[str], reuse: Path | None = None) -> dict:
    """Ours, then the example (or the example of an earlier comparison, `reuse`), then both scored; every
    figure in out/versus.json."""
    from .records import run_dir as run_files

    config = check_inputs(script, python, out, overrides)
    ours_dir, example_dir = out / "ours", out / "example"
    word = users_word(config["concept"]["initializer_token"])
    if reuse is not None and word is not None:  # refused before anything runs
        reused_example(reuse, example_command(python, script, {**config, "initializer": word}, example_dir))
    out.mkdir(parents=True, exist_ok=True)
    ours = launch([sys.executable, "-m", "ti_experiments", *overrides, f"hydra.run.dir={ours_dir}"],
                  out / "ours.log", watch=ours_dir / run_files.METRICS)
    if ours.exit_code != 0 or not (ours_dir / run_files.EMBEDDING).is_file():
        raise TIError(f"the project's run failed (exit code {ours.exit_code})", f"read {ours.log}")
    started = run_files.initializer_word(ours_dir, run_files.read_config(ours_dir))
    config["initializer"] = word or started
    command = example_command(python, script, config, example_dir)
    if reuse is not None:
        example, example_file = reused_example(reuse, command)
    else:
        example = launch(command, out / "example.log", env={**os.environ, "WANDB_MODE": "offline"})
        example_file = example_dir / "learned_embeds.safetensors"
    if example.exit_code != 0 or not example_file.is_file():
        raise TIError(f"the example failed (exit code {example.exit_code})", f"read {example.log}")
    scored_ours, scored_example = score_both(ours_dir, example_file)
    summary = run_files.read_summary(ours_dir)
    result = {"overrides": overrides, "initializer": config["initializer"], "ours_started_from": started,
              "ours": {**asdict(ours), "scores": scored_ours, "stopped_step": summary.get("stopped_step"),
                       "kept_step": summary.get("kept_step"), "stop_reason": summary.get("stop_reason")},
              "example": {**asdict(example), "scores": scored_example, "steps": GUIDE_STEPS},
              "reached": time_to_reach(ours.lines, scored_example["heldout_loss"])}
    run_files.write_json(out / "versus.json", result)
    return result


def table(r: dict) -> str:
    """Both runs' walls and scores, their ratios, and when this project reached the example's loss."""
    ours, theirs = r["ours"], r["example"]
    metrics = [m for m in ("heldout_loss", "clip_i", "clip_t", "dino") if m in ours["scores"] and m in theirs["scores"]]
    rows = [("wall s (launch to exit)", ours["wall_s"], theirs["wall_s"]),
            *((m, ours["scores"][m], theirs["scores"][m]) for m in metrics)]
    lines = [f"{'':<28}{'ours':>12}{'example':>12}{'ours / example':>16}"]
    lines += [f"{name:<28}{a:>12.4f}{b:>12.4f}{a / b:>16.3f}" for name, a, b in rows]
    lines.append(f"ours: kept step {ours['kept_step']}, stopped at step {ours['stopped_step']} "
                 f"({ours['stop_reason'] or 'max_steps'}); the example: {GUIDE_STEPS} steps x 4 images")
    reached = r["reached"]
    lines.append(f"ours reached the example's final held-out loss (within {WITHIN:.0%}) at step {reached['step']}, "
                 f"{reached['since_launch_s']:.1f} s after launch ({reached['since_launch_s'] / theirs['wall_s']:.3f}"
                 " of the example's wall)" if reached else
                 f"ours never came within {WITHIN:.0%} of the example's final held-out loss")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser("python -m ti_experiments.versus", EXAMPLES)
    parser.add_argument("example", type=Path, help="the diffusers example's textual_inversion.py")
    parser.add_argument("--example-python", default=sys.executable,
                        help="the Python that runs the example (default: this one; it needs torchvision)")
    parser.add_argument("--reuse-example", type=Path, default=None, metavar="VERSUS_DIR",
                        help="take the example's run (wall, embedding) from an earlier versus folder that ran "
                             "the same example command, instead of running it again (to compare settings of ours)")
    parser.add_argument("--out", type=Path, default=None,
                        help="a new folder for both runs and versus.json (default outputs/versus/DATE/TIME)")
    args, overrides = parser.parse_known_args(argv)
    out = args.out or Path("outputs/versus") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    try:
        reuse = args.reuse_example.expanduser().resolve() if args.reuse_example else None
        if reuse is not None and not (reuse / "versus.json").is_file():
            raise TIError(f"{reuse} holds no versus.json", "give a folder an earlier versus run wrote (its --out)")
        result = compare(args.example.expanduser().resolve(), args.example_python, out.resolve(), overrides, reuse)
    except Exception as exc:  # noqa: BLE001 - a user error becomes one line (exit 2); a bug keeps its traceback
        return report_or_raise(exc)
    print(table(result))
    print(json.dumps({k: result[k] for k in ("initializer", "reached")} |
                     {side: {k: result[side][k] for k in ("wall_s", "scores")} for side in ("ours", "example")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
