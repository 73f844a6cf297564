"""`python -m ti_experiments_dev.judge VERSUS_DIR... [KEY=VALUE ...]`: both sides of a comparison, rescored.

A `versus` (or `targets`) folder holds our run and the example's; `versus` scored our kept embedding and
the example's final one with the run's judge (4 images a prompt). This scores them again, and every
embedding either side saved along the way, with overrides of the run's evaluation: more judge images
(`evaluation.num_images=16`) or another image seed (`validation.seed=3`). It answers two questions the
single CLIP-I ratio cannot: how much of the ratio is the judge's own sampling (rescore with other seeds
and more images), and whether the two runs differ at equal steps or only in where they ended. One JSON
line per embedding; a table per folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

USAGE = "usage: python -m ti_experiments_dev.judge VERSUS_DIR... [KEY=VALUE ...] (e.g. evaluation.num_images=16)"


def rescore(versus_dir: Path, overrides: list[str]) -> list[dict]:
    """Ours (kept, then every saved step) and the example (every saved step), on our run's draws and prompts."""
    from ti_experiments.evaluate import scoring
    from ti_experiments.records import run_dir as run_files
    from ti_experiments.versus import GUIDE_STEPS, example_output

    example = example_output(run_files.read_json(versus_dir / "versus.json")["example"]["command"])
    ours = versus_dir / "ours"
    saved = {side: [(s, run_files.step_file(folder, s)) for s in run_files.saved_steps(folder)]
             for side, folder in (("ours", ours), ("example", example))}
    files = [("ours", None, ours / run_files.EMBEDDING), *(("ours", s, p) for s, p in saved["ours"]),
             *(("example", s, p) for s, p in saved["example"] or [(GUIDE_STEPS, example / run_files.EMBEDDING)])]
    with scoring(ours, ["evaluation.image_metrics=true", *overrides]) as opened:
        scored = opened.score([(step, path) for _, step, path in files])
    return [{"folder": versus_dir.name, "side": side, "step": step if step is not None else f"kept {s['step']}",
             "heldout_loss": s.get("heldout_loss"), "clip_i": s.get("clip_i")}
            for (side, step, _), s in zip(files, scored)]


def table(rows: list[dict]) -> str:
    final = max((r for r in rows if r["side"] == "example"), key=lambda r: r["step"])
    lines = ["| side | step | held-out | CLIP-I | CLIP-I / example's final |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['step']} | {r['heldout_loss']:.4f} | {r['clip_i']:.3f} | "
                     f"{r['clip_i'] / final['clip_i']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    folders = [Path(a) for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if not folders or any(not (f / "versus.json").is_file() for f in folders):
        print(f"error: give folders that versus or targets wrote (each has versus.json); fix: {USAGE}",
              file=sys.stderr)
        return 2
    for folder in folders:
        rows = rescore(folder, overrides)
        for r in rows:
            print(json.dumps(r), flush=True)
        print(f"\n{folder}\n{table(rows)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
