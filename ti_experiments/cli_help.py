"""The help every command prints: one short form (usage, what it does, options, examples, the other
commands), so a user who knows one command's --help can read every other's.

The training command's page is built here rather than by Hydra: Hydra's generic page lists every config
group, the internal ones included (hardware/base), and says neither that `+concept=NAME` is required nor
which other commands exist. The groups and options are read from conf/, so the page cannot go stale.
"""

from __future__ import annotations

# (module, arguments, what it does): the package's commands, in the order a user meets them
COMMANDS = (
    ("ti_experiments", "+concept=NAME [overrides]", "train one concept into a run directory"),
    ("ti_experiments.evaluate", "RUN_DIR", "score every saved embedding of a run"),
    ("ti_experiments.report", "PATH...", "compare runs or a sweep: a table, a CSV and plots"),
    ("ti_experiments.reproduce", "RUN_DIR", "run a finished run again from its own config"),
    ("ti_experiments.generate", "RUN_DIR PROMPT", "images with learned concepts"),
    ("ti_experiments.export", "SOURCE --format a1111", "the concept for AUTOMATIC1111/ComfyUI or diffusers"),
    ("ti_experiments.publish", "RUN_DIR", "upload a finished run to the Hugging Face Hub"),
    ("ti_experiments.bench", "[overrides]", "time the training step, its phases and memory"),
)

# The config groups a user chooses among (experiment is pulled in by the demo concepts, data and hub
# have one option each); options that only other options build on are left out.
USER_GROUPS = ("model", "hardware", "optimizer", "lr_scheduler", "evaluation", "logger")
INTERNAL_OPTIONS = {"hardware": {"base"}}

TRAIN_EXAMPLES = (
    ("python -m ti_experiments +concept=demo", "the offline demo: the toy world, on a CPU, in minutes"),
    ("python -m ti_experiments +concept=cat_toy hardware=low_vram", "SD 1.5 on a GPU with little memory"),
    ("python -m ti_experiments -m +concept=demo concept.num_vectors=1,4 optimizer.lr=5e-4,2e-3",
     "a sweep: one run per combination, then a report"),
)


def describe(module: str) -> str:
    """What a command does, in the words of the commands list (its --help's first line)."""
    what = next((w for m, _, w in COMMANDS if m == module), "")
    return what[:1].upper() + what[1:] + "." if what else ""


def _lines(pairs, width: int) -> list[str]:
    return [f"  {left:<{width}}  {right}" if right else f"  {left}" for left, right in pairs]


def epilog(module: str, examples) -> str:
    """The end of a command's --help: its examples (command, what it does), then the other commands."""
    out = ["examples:"]
    for command, what in examples:
        out += [f"  {command}", f"      {what}"] if what else [f"  {command}"]
    others = [(f"python -m {m} {a}", w) for m, a, w in COMMANDS if m != module]
    out += ["", "other commands (each has --help):", *_lines(others, max(len(c) for c, _ in others))]
    return "\n".join(out)


def page(usage: str, module: str, examples, details: str = "") -> str:
    """The whole --help of a command that parses its own arguments (RUN_DIR then Hydra overrides)."""
    return "\n\n".join(p for p in (usage, describe(module), details.strip(), epilog(module, examples)) if p)


def _defaults() -> dict[str, str]:
    """The option config.yaml chooses for each group (`model` -> `sd15`)."""
    import yaml

    from .config import CONF_DIR, CONFIG_NAME

    config = yaml.safe_load((CONF_DIR / f"{CONFIG_NAME}.yaml").read_text())
    return {k: v for item in config.get("defaults", []) if isinstance(item, dict) for k, v in item.items()}


def group_options(group: str) -> list[str]:
    """A group's options as a user chooses them, the default first and marked."""
    from .config import options

    names = [o for o in options(group) if o not in INTERNAL_OPTIONS.get(group, set())]
    default = _defaults().get(group)
    if default in names:
        names = [f"{default} (default)"] + [o for o in names if o != default]
    return names


def _toyworld_concepts() -> list[str]:
    """The concepts whose images the toy world draws (offline)."""
    from .config import CONF_DIR, options

    return [c for c in options("concept")
            if "draw_toyworld_concept" in (CONF_DIR / "concept" / f"{c}.yaml").read_text()]


def training_help() -> str:
    """`python -m ti_experiments --help`."""
    from .config import options

    groups = [(g, ", ".join(group_options(g))) for g in USER_GROUPS]
    groups.append(("hydra/launcher", "with -m: " + ", ".join(options("hydra/launcher"))
                   + " (default: one job after another)"))
    width = max(len(g) for g, _ in groups) + len("=OPTION")
    return "\n".join([
        "usage: python -m ti_experiments +concept=NAME [GROUP=OPTION ...] [KEY=VALUE ...]",
        "       python -m ti_experiments -m +concept=NAME KEY=A,B ...   (a sweep)",
        "",
        describe("ti_experiments")[:-1] + " (default: outputs/runs/<date>/<time>).",
        "",
        "required:",
        *_lines([("+concept=NAME", ", ".join(options("concept")))], width),
        *_lines([("", f"the toy world's (offline): {', '.join(_toyworld_concepts())}; your own images:"),
                 ("", "+concept=my_style concept.train_data_dir=DIR (a style; cat_toy for an object)")], width),
        "",
        "groups (GROUP=OPTION):",
        *_lines([(f"{g}=OPTION", o) for g, o in groups], width),
        "",
        "keys (KEY=VALUE), e.g. train.max_steps=3000 optimizer.lr=5e-4 concept.num_vectors=4 seed=0",
        "  hydra.run.dir=DIR; every key and its value: python -m ti_experiments +concept=demo --cfg job",
        "",
        epilog("ti_experiments", TRAIN_EXAMPLES),
    ])
