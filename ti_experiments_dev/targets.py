"""`python -m ti_experiments_dev.targets EXAMPLE.py [--example-python PY] [--out DIR] [--concepts a,b] [overrides]`

The time-to-quality targets on the toy world: for every named concept and a few compositions the project
never named, `ti_experiments.versus` runs the project's default command (`model=toyworld`, no concept
preset: the concept's folder, placeholder and initializer word only) beside the unmodified diffusers
example at the guide's settings, and the table says, per concept, whether the kept embedding reached
the example's final held-out loss (within 2%) and 0.98x its judge CLIP-I in at most a quarter of its
wall time. Extra overrides apply to every concept (e.g. `hardware.batch_size=4` to try a recipe).

Each concept's figures land in OUT/NAME/versus.json; a concept whose file exists is not run again, so
the command continues where an interrupted one stopped (about 10 minutes a concept on 2 CPU cores).
`--reuse EARLIER_OUT` takes each concept's example run from an earlier table instead of running it
again: a recipe or a seed of ours then costs a minute or two a concept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ti_experiments.toyworld import world

# compositions no config names (the world's attributes, combined here): the unseen concepts
UNSEEN = {
    "blue_triangle": (dict(shape="triangle", colour="blue", size="small", pattern="plain", ears=False, dot="red"),
                      "triangle"),
    "black_eared_circle": (dict(shape="circle", colour="black", size="medium", pattern="striped", ears=True,
                                dot="none"), "circle"),
    # like demo_style, a colour, a pattern and a background over any shape, size and position
    "red_on_teal": (dict(colour="red", pattern="plain", background="teal", ears=False, dot="white"), "red"),
}
# the named concepts' own initializer words (conf/concept/NAME.yaml)
NAMED = {"demo": "circle", "demo_style": "yellow", "eared_box": "square", "dotted_cross": "cross"}
TARGETS = {"heldout": 1.02, "clip_i": 0.98, "wall": 0.25}


def draw(name: str, fixed: dict, folder: Path, count: int = 6) -> Path:
    """A concept's images, drawn as the named concepts' are (its fixed parts, everything else varied)."""
    from ti_experiments.data.sources import draw_toyworld_images

    return draw_toyworld_images(folder, world.Concept(name, fixed), count)


def concept_overrides(name: str, folder: Path, word: str) -> list[str]:
    """The project's default command for a folder of images: no concept preset, the toy world model."""
    token = f"<{name.replace('_', '-')}>"
    return ["+concept=cat_toy", "model=toyworld", f"concept.train_data_dir={folder}",
            f"concept.placeholder_token='{token}'", f"concept.initializer_token={word}",
            f"concept.validation_prompt='a photo of a {token}'"]


def folders(out: Path) -> dict[str, tuple[Path, str]]:
    folders = {}
    for name, word in NAMED.items():
        folders[name] = (draw(name, world.CONCEPTS[name].fixed, out / "images" / name), word)
    for name, (fixed, word) in UNSEEN.items():
        folders[name] = (draw(name, fixed, out / "images" / name), word)
    return folders


def row(name: str, r: dict) -> dict:
    ours, theirs = r["ours"], r["example"]
    ratio = {"heldout": ours["scores"]["heldout_loss"] / theirs["scores"]["heldout_loss"],
             "clip_i": ours["scores"]["clip_i"] / theirs["scores"]["clip_i"],
             "wall": ours["wall_s"] / theirs["wall_s"]}
    met = {"heldout": ratio["heldout"] <= TARGETS["heldout"], "clip_i": ratio["clip_i"] >= TARGETS["clip_i"],
           "wall": ratio["wall"] <= TARGETS["wall"]}
    return {"concept": name, "example": theirs, "ours": ours, "ratio": ratio, "met": met}


def table(rows: list[dict]) -> str:
    head = ("| concept | example: wall s / held-out / CLIP-I | ours: wall s / held-out / CLIP-I | held-out ratio "
            "| CLIP-I ratio | wall ratio | stopped / kept step | all met |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        e, o = r["example"], r["ours"]
        mark = {k: ("" if v else " **x**") for k, v in r["met"].items()}
        lines.append(f"| {r['concept']} | {e['wall_s']:.0f} / {e['scores']['heldout_loss']:.4f} / "
                     f"{e['scores']['clip_i']:.3f} | {o['wall_s']:.0f} / {o['scores']['heldout_loss']:.4f} / "
                     f"{o['scores']['clip_i']:.3f} | {r['ratio']['heldout']:.3f}{mark['heldout']} | "
                     f"{r['ratio']['clip_i']:.3f}{mark['clip_i']} | {r['ratio']['wall']:.3f}{mark['wall']} | "
                     f"{o['stopped_step']} / {o['kept_step']} | {'yes' if all(r['met'].values()) else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ti_experiments.versus import compare

    parser = argparse.ArgumentParser(prog="python -m ti_experiments_dev.targets")
    parser.add_argument("example", type=Path)
    parser.add_argument("--example-python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=Path("outputs/targets"))
    parser.add_argument("--concepts", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier --out: each concept's example run is taken from there, not run again")
    args, overrides = parser.parse_known_args(argv)
    out = args.out.resolve()
    chosen = folders(args.reuse.resolve() if args.reuse else out)  # the example ran on those folders
    names = args.concepts.split(",") if args.concepts else list(chosen)
    rows = []
    for name in names:
        done = out / name / "versus.json"
        if not done.is_file():
            folder, word = chosen[name]
            print(f"== {name}", flush=True)
            if (out / name).exists():  # an interrupted attempt: kept aside, never overwritten
                (out / name).rename(out / f"{name}.interrupted-{len(list(out.glob(name + '.interrupted-*')))}")
            compare(args.example.resolve(), args.example_python, out / name,
                    [*concept_overrides(name, folder, word), *overrides],
                    reuse=args.reuse.resolve() / name if args.reuse else None)
        rows.append(row(name, json.loads(done.read_text())))
    print(table(rows))
    (out / "targets.json").write_text(json.dumps(
        [{k: r[k] for k in ("concept", "ratio", "met")} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
