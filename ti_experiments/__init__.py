"""Textual inversion experiments: Hydra configs, an Accelerate loop, files that load into diffusers."""

__version__ = "0.1.0"

from . import quiet as _quiet  # noqa: E402 - messages no user can act on stay off the console

_quiet.install()

# The Python API, imported on first use: importing the package (which every command does) stays cheap.
_API = ("train", "generate", "compose", "RunResult")


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
