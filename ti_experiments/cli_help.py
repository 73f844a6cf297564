"""The help every command prints: one short form (usage, what it does, options, examples, the other
commands), so a user who knows one command's --help can read every other's.

Nothing here imports the package (errors.ArgumentParser uses it): the training command's page, which
reads conf/, is __main__'s.
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
    ("ti_experiments.versus", "EXAMPLE.py [overrides]", "time to quality against the diffusers example"),
)


def describe(module: str) -> str:
    """What a command does, in the words of the commands list (its --help's first line)."""
    what = next((w for m, _, w in COMMANDS if m == module), "")
    return what[:1].upper() + what[1:] + "." if what else ""


def lines(pairs, width: int) -> list[str]:
    return [f"  {left:<{width}}  {right}" if right else f"  {left}" for left, right in pairs]


def epilog(module: str, examples) -> str:
    """The end of a command's --help: its examples (command, what it does), then the other commands."""
    out = ["examples:"]
    for command, what in examples:
        out += [f"  {command}", f"      {what}"] if what else [f"  {command}"]
    others = [(f"python -m {m} {a}", w) for m, a, w in COMMANDS if m != module]
    out += ["", "other commands (each has --help):", *lines(others, max(len(c) for c, _ in others))]
    return "\n".join(out)


def page(usage: str, module: str, examples, details: str = "") -> str:
    """The whole --help of a command that parses its own arguments (RUN_DIR then Hydra overrides)."""
    return "\n\n".join(p for p in (usage, describe(module), details.strip(), epilog(module, examples)) if p)
