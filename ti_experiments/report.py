"""`python -m ti_experiments.report PATH... [--out DIR]`: compare runs in one table.

PATH is a run directory or any directory above runs (a sweep). One row per run: the settings that
differ between the runs, status, final loss, speed, memory and any evaluation metric in summary.json.
Writes report.md, report.csv, loss_curves.png, sweep.png (final loss and metrics against each value that
differs), validation.png and evaluation.png (held-out loss, CLIP-I/CLIP-T/DINO against the step); failed and
unfinished runs are kept. When the runs differ in `seed` and in something else, report.md also has each
setting's mean over its seeds and their spread, and says whether the settings differ by more than the seeds.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import datetime
from pathlib import Path

from .records import run_dir as run_files
from .errors import ArgumentParser, report_or_raise
from .records.files import atomic_path, write_text_atomic

STANDARD = {"final_loss", "avg_loss", "steps", "wall_seconds", "train_seconds", "steps_per_sec", "peak_memory_bytes",
            "learned_embeds_sha256"}
IGNORED_PREFIXES = ("paths.", "reproduced_from")


class ReportError(Exception):
    pass


def find_runs(paths: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ReportError(f"{path} does not exist; fix: pass run directories or a sweep directory")
        found = [path] if (path / run_files.RECORD).is_file() else sorted(p.parent for p in path.rglob(run_files.RECORD))
        runs += [r for r in found if r not in runs]
    if not runs:
        raise ReportError(f"no run.json under {', '.join(map(str, paths))}; fix: pass the directory of a run "
                          "or of a sweep")
    return runs


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def load_run(run_dir: Path) -> dict:
    """A run as the report's rows and plots read it: the run directory's files, the config flattened."""
    run = run_files.load_run(run_dir)
    return {"dir": run.dir, "record": run.record, "summary": run.summary, "config": dict(_flatten(run.config)),
            "metrics": run.metrics}


def differing_keys(runs: list[dict]) -> list[str]:
    keys = sorted({k for r in runs for k in r["config"]})
    return [k for k in keys if not k.startswith(IGNORED_PREFIXES)
            and len({json.dumps(r["config"].get(k), default=str) for r in runs}) > 1]


def _names(runs: list[dict]) -> list[str]:
    """Short, unique names: the run directories relative to their common parent."""
    dirs = [r["dir"].resolve() for r in runs]
    if len(dirs) == 1:
        return [dirs[0].name]
    parts = [d.parts for d in dirs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


def table(runs: list[dict]) -> tuple[list[str], list[list]]:
    varying = differing_keys(runs)
    metrics = sorted({k for r in runs for k, v in r["summary"].items()
                      if k not in STANDARD and isinstance(v, (int, float))})
    header = ["run", *varying, "status", "final_loss", "avg_loss", "steps", "steps_per_sec", "peak_memory_gb",
              *metrics]
    rows = []
    for name, r in zip(_names(runs), runs):
        s = r["summary"]
        status = r["record"].get("status", "unknown")
        if status == "running" and not s:
            status = "running/unfinished"
        peak = s.get("peak_memory_bytes")
        rows.append([name, *[r["config"].get(k) for k in varying], status, s.get("final_loss"), s.get("avg_loss"),
                     s.get("steps"),
                     s.get("steps_per_sec"), round(peak / 2**30, 3) if peak else None,
                     *[s.get(k) for k in metrics]])
    return header, rows


def failures(runs: list[dict], names: list[str]) -> list[str]:
    """One line per run that did not complete: its status, why (the error's first line), and the log to
    read (the scheduler's, e.g. submitit's stderr, else the run's ti.log)."""
    lines = []
    for name, r in zip(names, runs):
        record = r["record"]
        status = record.get("status", "unknown")
        if status == "completed":
            continue
        error = record.get("error") or {}
        reason = next((ln.strip() for ln in str(error.get("message") or "").splitlines() if ln.strip()), "no error "
                      "recorded (still running, or killed before it could say why)")
        log = error.get("log") or (record.get("slurm") or {}).get("log") or str(Path(r["dir"]) / run_files.LOG)
        lines.append(f"{name}: {status}: {reason} (log: {log})")
    return lines


SEED_METRICS = ("heldout_loss", "avg_loss", "final_loss", "clip_i", "clip_t", "dino")


def seed_table(runs: list[dict]) -> tuple[list[str], list[list], list[str]] | None:
    """Each setting (the differing keys other than `seed`) with its mean and spread (max - min) over the
    seeds it ran with, per metric; and a line per metric comparing the settings' spread of means with the
    largest spread between seeds. None unless the runs differ in the seed and in something else."""
    varying = differing_keys(runs)
    # keys that follow the seed (validation.seed: ${seed}) are the seed, not a setting
    others = [k for k in varying if k != "seed" and any(r["config"].get(k) != r["config"].get("seed") for r in runs)]
    if "seed" not in varying or not others:
        return None
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(json.dumps(r["config"].get(k), default=str) for k in others), []).append(r)
    metrics = [m for m in SEED_METRICS if any(isinstance(r["summary"].get(m), (int, float)) for r in runs)]
    header, rows, stats = [*others, "seeds"], [], {m: ([], []) for m in metrics}
    for m in metrics:
        header += [f"{m} mean", f"{m} seed spread"]
    for key, members in groups.items():
        row = [json.loads(v) for v in key] + [len(members)]
        for m in metrics:
            values = [r["summary"][m] for r in members if isinstance(r["summary"].get(m), (int, float))]
            mean = sum(values) / len(values) if values else None
            spread = max(values) - min(values) if len(values) > 1 else None
            row += [mean, spread]
            if mean is not None:
                stats[m][0].append(mean)
            if spread is not None:
                stats[m][1].append(spread)
        rows.append(row)
    rows.sort(key=lambda row: [(0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in row[:len(others)]])
    lines = []
    for m, (means, spreads) in stats.items():
        if len(means) > 1 and spreads:
            between, within = max(means) - min(means), max(spreads)
            lines.append(f"{m}: the settings' means differ by {between:.4g}; the largest spread between seeds of "
                         f"one setting is {within:.4g} ({between / within:.1f}x)" if within else
                         f"{m}: the settings' means differ by {between:.4g}; the seeds agree exactly")
    return header, rows, lines


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_text_atomic(path, buffer.getvalue())


def plot_losses(path: Path, runs: list[dict], names: list[str]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    drawn = False
    for name, r in zip(names, runs):
        points = [(m["step"], m["loss"]) for m in r["metrics"] if m.get("loss") is not None]
        if not points:
            continue
        steps, losses = zip(*points)
        smooth, ema = [], losses[0]
        for loss in losses:  # an EMA, since the per-step loss of textual inversion is very noisy
            ema = 0.9 * ema + 0.1 * loss
            smooth.append(ema)
        line, = ax.plot(steps, smooth, label=name)
        ax.plot(steps, losses, color=line.get_color(), alpha=0.15)
        drawn = True
    ax.set_xlabel("step")
    ax.set_ylabel("loss (EMA 0.9; raw faint)")
    if drawn:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return drawn


def plot_sweep(path: Path, runs: list[dict], keys: list[str]) -> bool:
    """Final loss (and each evaluation metric) against every swept value: one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["final_loss", "avg_loss"] + sorted({k for r in runs for k, v in r["summary"].items()
                                       if k not in STANDARD and isinstance(v, (int, float))})
    if not keys:
        return False
    fig, axes = plt.subplots(len(metrics), len(keys), figsize=(4 * len(keys), 3 * len(metrics)), dpi=100,
                             squeeze=False)
    for col, key in enumerate(keys):
        values = [r["config"].get(key) for r in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        order = sorted(set(map(str, values)), key=lambda v: float(v) if numeric else v)
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            points = [(v, r["summary"].get(metric)) for v, r in zip(values, runs)
                      if r["summary"].get(metric) is not None]
            if numeric:
                ax.scatter([v for v, _ in points], [m for _, m in points])
                if len({v for v, _ in points}) > 1 and min(v for v, _ in points) > 0 \
                        and max(v for v, _ in points) / min(v for v, _ in points) >= 10:
                    ax.set_xscale("log")
            else:
                ax.scatter([order.index(str(v)) for v, _ in points], [m for _, m in points])
                ax.set_xticks(range(len(order)), order, rotation=30)
            ax.set_xlabel(key)
            ax.set_ylabel(metric)
    fig.suptitle("each point is one run (failed runs have no value)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


EVAL_SERIES = ("heldout_loss", "clip_i", "clip_t", "dino")


def plot_evaluation(path: Path, runs: list[dict], names: list[str]) -> bool:
    """Each evaluation metric against the step, one panel per metric (held-out loss: the initializer's
    dashed); nothing is written when no run has evaluation rows."""
    series = [k for k in EVAL_SERIES if any(k in m for r in runs for m in r["metrics"])]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.5), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], series):
        for name, r in zip(names, runs):
            points = [(m["step"], m[key], m.get("heldout_loss_init")) for m in r["metrics"] if key in m]
            if not points:
                continue
            line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=name)
            if key == "heldout_loss" and points[0][2] is not None:
                ax.plot([p[0] for p in points], [p[2] for p in points], color=line.get_color(), linestyle="--",
                        alpha=0.6)
        ax.set_xlabel("step")
        ax.set_ylabel(key + (" (dashed: initializer)" if key == "heldout_loss" else ""))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def last_validation_image(run_dir: Path) -> Path | None:
    _, images = run_files.last_validation(run_dir)
    return images[0] if images else None


def validation_strip(path: Path, runs: list[dict], names: list[str], size: int = 256) -> bool:
    from PIL import Image, ImageDraw

    tiles = []
    for name, r in zip(names, runs):
        image_path = last_validation_image(r["dir"])
        tile = Image.new("RGB", (size, size + 20), "white")
        if image_path is not None:
            with Image.open(image_path) as img:
                tile.paste(img.convert("RGB").resize((size, size)), (0, 20))
            suffix = f" ({image_path.parent.name})"
        else:
            suffix = " (no image)"
        ImageDraw.Draw(tile).text((4, 4), name[-(40 - len(suffix)):] + suffix, fill="black")
        tiles.append(tile)
    strip = Image.new("RGB", (size * len(tiles), size + 20), "white")
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * size, 0))
    with atomic_path(path) as tmp:
        strip.save(tmp, format="PNG")
    return any(last_validation_image(r["dir"]) for r in runs)


def report(paths: list[Path], out: Path | None = None) -> dict:
    run_dirs = find_runs(paths)
    runs = [load_run(d) for d in run_dirs]
    names = _names(runs)
    if out is None:
        out = paths[0] if len(paths) == 1 else Path("outputs/reports") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; fix: pass a folder (the report writes report.md, report.csv and "
                          "its plots into it)")
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table(runs)
    text = markdown(header, rows)
    failed = failures(runs, names)
    if failed:
        text += "\n## Runs that did not complete\n\n" + "".join(f"- {line}\n" for line in failed)
    seeds = seed_table(runs)
    if seeds:
        text += "\n## Settings over seeds\n\n" + markdown(seeds[0], seeds[1]) + "\n" + \
            "".join(f"- {line}\n" for line in seeds[2])
    write_text_atomic(out / "report.md", text)
    write_csv(out / "report.csv", header, rows)
    plot_losses(out / "loss_curves.png", runs, names)
    plot_sweep(out / "sweep.png", runs, differing_keys(runs))
    validation_strip(out / "validation.png", runs, names)
    plot_evaluation(out / "evaluation.png", runs, names)
    return {"header": header, "rows": rows, "markdown": text, "out": out, "failures": failed}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m ti_experiments.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: the one PATH given, else outputs/reports/<time>)")
    args = parser.parse_args(argv)
    try:
        result = report(args.paths, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - an unwritable folder is one line; a bug keeps its traceback
        return report_or_raise(exc)
    print(result["markdown"], end="")
    names = [n for n in ("report.md", "report.csv", "loss_curves.png", "sweep.png", "validation.png", "evaluation.png")
             if (result["out"] / n).exists()]
    print(f"\nwritten: {', '.join(str(result['out'] / n) for n in names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
