"""`python -m ti_experiments.report PATH... [--out DIR]`: compare runs in one table.

PATH is a run directory or any directory above runs (a sweep). One row per run: the settings that
differ between the runs, status, final loss, speed, memory and any evaluation metric in summary.json.
Writes report.md, report.csv, loss_curves.png, sweep.png (each result that differs between the runs against
the swept values), validation.png (each run's validation images over its steps) and evaluation.png (held-out
loss, CLIP-I/CLIP-T/DINO against the step), each run named by its swept values (docs/run-directory.md);
failed and unfinished runs are kept. When the runs differ in `seed` and in something else, report.md also has each
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
            "learned_embeds_sha256", "stopped_step"}
IGNORED_PREFIXES = ("paths.", "reproduced_from")
EVAL_SERIES = ("heldout_loss", "clip_i", "clip_t", "dino")
DIRECTION = {"heldout_loss": " (lower is better)", "avg_loss": " (lower is better)",
             "final_loss": " (lower is better)", "clip_i": " (higher is better)", "clip_t": " (higher is better)",
             "dino": " (higher is better)"}


class ReportError(Exception):
    pass


def find_runs(paths: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ReportError(f"{path} does not exist; fix: pass run directories or a sweep directory")
        found = [path] if (path / run_files.RECORD).is_file() else sorted(
            (p.parent for p in path.rglob(run_files.RECORD)), key=_natural)
        runs += [r for r in found if r not in runs]
    if not runs:
        raise ReportError(f"no run.json under {', '.join(map(str, paths))}; fix: pass the directory of a run "
                          "or of a sweep")
    return runs


def _natural(path: Path) -> list:
    """A sweep's jobs in their order: 2 before 10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


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


def _short(key: str, keys: list[str]) -> str:
    """`optimizer.lr` -> `lr` where no other key ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _value(value) -> str:
    """0.0005 -> 5e-4, 0.25 -> 0.25: a learning rate as people write it."""
    if isinstance(value, float) and value and not 1e-2 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def swept_keys(runs: list[dict]) -> list[str]:
    """The settings the runs differ in, without the ones that only follow another (validation.seed: ${seed})."""
    keys = differing_keys(runs)
    follows = lambda k, o: all(r["config"].get(k) == r["config"].get(o) for r in runs)  # noqa: E731
    kept: list[str] = []
    for key in sorted(keys, key=lambda k: (k.count("."), k)):  # the shallower key is the one a user set
        if not any(follows(key, other) for other in kept):
            kept.append(key)
    return [k for k in keys if k in kept]


def labels(runs: list[dict], names: list[str]) -> list[str]:
    """Each run named by its swept values (`num_vectors=4, lr=0.0005`); by its folder when they are the same."""
    keys = swept_keys(runs)
    if not keys:
        return names
    return [", ".join(f"{_short(k, keys)}={_value(r['config'].get(k))}" for k in keys) for r in runs]


def styles(runs: list[dict], names: list[str]) -> list[tuple[str, str, str]]:
    """(label, colour, line style) per run: a colour per setting, a line style per seed of it."""
    seeded = "seed" in swept_keys(runs)
    settings: dict = {}
    seeds: dict = {}
    out = []
    for label, r in zip(labels(runs, names), runs):
        setting = label.replace(f"seed={_value(r['config'].get('seed'))}", "") if seeded else label
        colour = f"C{settings.setdefault(setting, len(settings)) % 10}"
        dash = ("-", "--", ":", "-.")[seeds.setdefault(r["config"].get("seed"), len(seeds)) % 4] if seeded else "-"
        out.append((label, colour, dash))
    return out


def _figure(panels: int, width: float = 4.2, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.9), dpi=100, squeeze=False,
                             layout="constrained")
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:panels])


def _save(plt, fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _legend(fig, axes, title: str | None = None) -> None:
    """One legend for the figure, below the panels, in as many columns as fit."""
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(names)), fontsize=8,
                   title=title, title_fontsize=8)


def plot_losses(path: Path, runs: list[dict], names: list[str]) -> bool:
    plt, fig, (ax,) = _figure(1, width=8, height=4.5)
    drawn = False
    for (name, colour, dash), r in zip(styles(runs, names), runs):
        points = [(m["step"], m["loss"]) for m in r["metrics"] if m.get("loss") is not None]
        if not points:
            continue
        steps, losses = zip(*points)
        smooth, ema = [], losses[0]
        for loss in losses:  # an EMA, since the per-step loss of textual inversion is very noisy
            ema = 0.9 * ema + 0.1 * loss
            smooth.append(ema)
        ax.plot(steps, smooth, label=name, color=colour, linestyle=dash)
        ax.plot(steps, losses, color=colour, alpha=0.12, linewidth=0.8)
        drawn = True
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (EMA 0.9; raw faint)")
    _legend(fig, [ax])
    _save(plt, fig, path)
    return drawn


def varying_metrics(runs: list[dict]) -> list[str]:
    """The numeric results that differ between the runs (a constant, such as the initializer's held-out
    loss, says nothing about the sweep); bookkeeping (steps, counts, sizes) is not a result."""
    found = {k for r in runs for k, v in r["summary"].items()
             if k not in STANDARD and isinstance(v, (int, float)) and not isinstance(v, bool)}
    keys = [k for k in EVAL_SERIES if k in found] + sorted(found - set(EVAL_SERIES)) + ["avg_loss", "final_loss"]
    skip = lambda k: "step" in k or k.startswith("num_") or k.endswith(("_bytes", "_seconds"))  # noqa: E731
    values = lambda k: {r["summary"].get(k) for r in runs if r["summary"].get(k) is not None}  # noqa: E731
    return [k for k in keys if not skip(k) and len(values(k)) > 1]


def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def plot_sweep(path: Path, runs: list[dict], keys: list[str]) -> list[str]:
    """Each result that varies against the swept value with the most values, one panel per result (the
    results drawn are returned); the other swept values (but the seed) are the series, each run a point,
    each setting's mean over seeds a line."""
    keys = [k for k in keys if k in swept_keys(runs)]
    metrics = varying_metrics(runs)
    if not keys or not metrics:
        return []
    distinct = lambda k: len({json.dumps(r["config"].get(k), default=str) for r in runs})  # noqa: E731
    x_key = max((k for k in keys if k != "seed"), key=distinct, default=keys[0])  # the most values: the x axis
    series_keys = [k for k in keys if k not in (x_key, "seed")]
    values = [r["config"].get(x_key) for r in runs]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    order = sorted(set(map(str, values)), key=lambda v: float(v) if numeric else v)
    position = (lambda v: v) if numeric else (lambda v: order.index(str(v)))
    groups: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: [_sortable(r["config"].get(k)) for k in series_keys]):
        groups.setdefault(", ".join(f"{_short(k, keys)}={_value(r['config'].get(k))}" for k in series_keys)
                          or "runs", []).append(r)
    plt, fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for label, members in groups.items():
            points = sorted((position(r["config"].get(x_key)), r["summary"][metric]) for r in members
                            if isinstance(r["summary"].get(metric), (int, float)))
            if not points:
                continue
            dots = ax.scatter(*zip(*points), s=18, label=label)
            xs = sorted({x for x, _ in points})
            means = [sum(m for x2, m in points if x2 == x) / sum(x2 == x for x2, _ in points) for x in xs]
            ax.plot(xs, means, color=dots.get_facecolor()[0], alpha=0.7)
        if numeric and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
            ax.minorticks_off()
        if numeric:
            ax.set_xticks(sorted(set(values)), [_value(v) for v in sorted(set(values))])
        else:
            ax.set_xticks(range(len(order)), order, rotation=20, ha="right")
        ax.set_xlabel(_short(x_key, keys))
        ax.set_title(metric + DIRECTION.get(metric, ""), fontsize=10)
    settings = {(label, position(r["config"].get(x_key))) for label, members in groups.items() for r in members}
    seeds = " (each seed a point, lines through their mean)" if len(settings) < len(runs) else ""
    fig.suptitle(f"results that differ between the runs, against {_short(x_key, keys)}{seeds}", fontsize=10)
    if series_keys:
        _legend(fig, axes)
    _save(plt, fig, path)
    return metrics


def plot_evaluation(path: Path, runs: list[dict], names: list[str]) -> bool:
    """Each evaluation metric against the step, one panel per metric; the held-out loss panel also has
    each run's initializer word's (a flat dashed line: that word does not train); nothing is written
    when no run has evaluation rows."""
    found = [k for k in EVAL_SERIES if any(k in m for r in runs for m in r["metrics"])]
    if not found:
        return False
    # a metric with one value everywhere says nothing (kept when it is all there is)
    series = [k for k in found if len({m[k] for r in runs for m in r["metrics"] if k in m}) > 1] or found
    plt, fig, axes = _figure(len(series))
    for ax, key in zip(axes, series):
        inits: set = set()
        for (name, colour, dash), r in zip(styles(runs, names), runs):
            points = [(m["step"], m[key], m.get("heldout_loss_init")) for m in r["metrics"] if key in m]
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=name, color=colour,
                    linestyle=dash)
            init = points[0][2]
            if key == "heldout_loss" and init is not None and round(init, 6) not in inits:
                inits.add(round(init, 6))
                ax.axhline(init, color="grey", linestyle=(0, (6, 3)), linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_title(key + DIRECTION.get(key, "") + ("\ngrey: the initializer word's" if inits else ""),
                     fontsize=10)
    _legend(fig, axes)
    _save(plt, fig, path)
    return True


def validation_strip(path: Path, runs: list[dict], names: list[str], most: int = 6) -> bool:
    """Each run's validation images over its steps (first prompt), a row per run named by its values."""
    from .evaluation.pictures import sheet, spread

    per_run = [dict(run_files.validation_steps(r["dir"])) for r in runs]
    steps = spread(sorted({s for found in per_run for s in found}), most)
    if not steps:
        return False
    rows = [(label, [run_files.prompt_images(found.get(step, []), 0) for step in steps])
            for label, found in zip(labels(runs, names), per_run)]
    picture = sheet(rows, [f"step {s}" for s in steps], size=96, label_width=220)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return True


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


EXAMPLES = (
    ("python -m ti_experiments.report outputs/sweeps/DATE/TIME", "a sweep: its report, written into its folder"),
    ("python -m ti_experiments.report outputs/runs/DATE/A outputs/runs/DATE/B", "two runs side by side"),
    ("python -m ti_experiments.report outputs/runs/DATE --out my-report", "every run of a day, into my-report/"),
)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m ti_experiments.report", usage="%(prog)s PATH... [--out DIR]",
                            examples=EXAMPLES)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run directories or sweep directories")
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
