"""The one exception type that reaches the user as a clean, one-line message, and the machinery that
turns any error into that line (every command's `main` ends in `report_or_raise`)."""

from __future__ import annotations

import argparse
import errno
import sys

# A user who sets HYDRA_FULL_ERROR gets Hydra's full tracebacks; the CLI's main() decides, for its own run.
SHOW_HYDRA_TRACEBACKS = False


class TIError(Exception):
    """A problem the user can fix: the message names the problem and the fix, on one line."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; fix: {fix}" if fix else problem)


class Interrupted(KeyboardInterrupt):
    """A stop for a signal, once the run saved what it had (the loop: a checkpoint of its step; a SLURM
    job outside the steps: nothing to save); run.json records the run as interrupted."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def cause(exc: BaseException, limit: int = 200) -> str:
    """An error's first readable line, for the middle of a one-line message. Some libraries raise errors
    that say nothing ("[Errno None] None", an empty message) around the one that does: the chain
    (`raise ... from`, or an error raised while handling another) is followed to the first that says
    something; the error's class name when none does. A first line that ends in a colon announces the
    next ("Failed to import X because of the following error (look up to see its traceback):"), which is
    added."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines = [line.strip() for line in str(current).splitlines() if line.strip()] or [""]
        line = lines[0].removeprefix("[Errno None] ").strip()
        if line.endswith(":") and len(lines) > 1:
            line = f"{line} {lines[1]}"
        if line and line != "None":
            return line[:limit]
        current = current.__cause__ or current.__context__
    return type(exc).__name__


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix; None for a bug (which keeps its traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, TIError):
        return f"error: {exc}"
    if isinstance(exc, OSError) and exc.filename and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"error: no space left on the device while writing {exc.filename} (the previous copy, if any, "
                "is intact); fix: free disk space, then run the command again")
    if isinstance(exc, OSError) and exc.filename:  # a path the user gave: unwritable, not a folder, disk full
        return (f"error: cannot write {exc.filename} ({exc.strerror or exc.__class__.__name__}); fix: choose a "
                "writable place with free space (a run: hydra.run.dir or TI_OUTPUT_ROOT; a command: its --out)")
    if _out_of_memory(exc):
        first = cause(exc, 160)
        return (f"error: out of memory ({first}); fix: use a smaller data.resolution or train.batch_size "
                "(generate: --width/--height), or hardware=low_vram")
    if isinstance(exc, (HydraException, OmegaConfBaseException)) and not SHOW_HYDRA_TRACEBACKS:
        return f"error: {hydra_error(exc)}"
    return None


def _out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, torch's CUDA OOM, and the CPU allocator's failure (a RuntimeError)."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def hydra_error(exc: BaseException) -> TIError:
    """A Hydra/OmegaConf error as a TIError: its message on one line, and a hint at the fix."""
    text = one_line(exc)
    return TIError(text, _hydra_hint(text))


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf messages span lines ('Available options in ...:' then one per line); fold them."""
    lines: list[str] = []
    for source in (exc, exc.__cause__):
        text = str(source or "").split("Config search path")[0]
        lines += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("object_type=")]
    pieces: list[str] = []
    listing = False
    for line in lines:
        if line in pieces:
            continue
        if listing and not line.endswith(":"):
            pieces[-1] += (" " if pieces[-1].endswith(":") else ", ") + line
            continue
        pieces.append(line)
        listing = line.endswith(":")
    return "; ".join(p.rstrip(".") for p in pieces)


def _hydra_hint(text: str) -> str:
    if "Missing mandatory value" in text:
        return "set it on the command line, e.g. concept.train_data_dir=/path/to/images"
    if "not in struct" in text or "Could not override" in text:
        return "check the key's spelling; list every key with: python -m ti_experiments --cfg job"
    if "Could not find" in text or "Available options" in text:
        return "pick one of the available options"
    if "LexerNoViableAlt" in text or "mismatched input" in text or "extraneous input" in text:
        return "write each override as key=value, e.g. train.max_steps=100 (every key: python -m ti_experiments --cfg job)"
    return "list every key and its value with: python -m ti_experiments --cfg job"


def report_or_raise(exc: Exception) -> int:
    """A user error: print its one line and return exit code 2. A bug: re-raise, traceback and all."""
    line = user_message(exc)
    if line is None:
        raise exc
    print(line, file=sys.stderr)
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every command, whose errors read like every other: `error: <problem>; fix: <the usage>`,
    one line, exit code 2; and whose --help has the one short form (cli_help): usage, what the command
    does, options, `examples` ((command, what it does) pairs), the other commands."""

    def __init__(self, prog: str, examples=(), **kwargs):
        from .cli_help import describe, epilog

        module = prog.split()[-1]
        if "description" not in kwargs:
            kwargs["description"] = describe(module)
        super().__init__(prog=prog, epilog=epilog(module, examples),
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        usage = " ".join(self.format_usage().split())
        print(f"error: {message}; fix: {usage} (more: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def command_arguments(args: list[str], usage: str) -> None:
    """The first check of a command that takes a run directory and overrides (evaluate, reproduce): a
    missing directory or an unknown option is an error line like argparse's."""
    if not args:
        raise TIError("no run directory given", usage)
    if args[0].startswith("-"):
        raise TIError(f"unknown option {args[0]}", usage)


def hydra_arguments(prog: str) -> None:
    """Hydra's own argument parser (the training and pretraining commands), named after the command and
    with the same error line as every other command's."""
    import importlib
    import types

    from hydra._internal.utils import get_args_parser

    hydra_main = importlib.import_module("hydra.main")  # the module; `hydra.main` the attribute is the decorator

    def parser():
        built = get_args_parser()
        built.prog = prog
        built.error = types.MethodType(ArgumentParser.error, built)
        return built

    hydra_main.get_args_parser = parser
