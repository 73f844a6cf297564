"""Typed settings: a config group's node becomes a dataclass, and its field types and bounds are the checks.

Hydra accepts any value for a key that exists (`train.max_steps=abc` composes); `Settings.from_node`
turns a value of the wrong type or out of range into one line that names the key and a value that works,
from the annotation (`int`, `float`, `bool`, `str`, `Literal[...]`, `X | None`) and the field's
`bound(...)`, so a new field is checked by declaring it.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args, get_origin

from .errors import TIError

__all__ = ["Literal", "Settings", "bound"]


def bound(default: Any = MISSING, *, minimum: float | None = None, positive: bool = False, example: str = "") -> Any:
    """A field with a range: `minimum` (inclusive) or `positive` (> 0), and the example the fix names."""
    return field(default=default, metadata={"minimum": minimum, "positive": positive, "example": example})


@dataclass
class Settings:
    """Base of the typed config groups; subclasses set GROUP (the key prefix the messages name)."""

    GROUP: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check(f"{self.GROUP}.{f.name}" if self.GROUP else f.name, getattr(self, f.name), hints[f.name],
                   f.metadata)

    @classmethod
    def from_node(cls, node):
        """The settings of a config node (resolved); a key the dataclass does not know is an error."""
        from omegaconf import OmegaConf

        # a mandatory value still missing (`???`) is reported where it is used, with its own hint
        values = (OmegaConf.to_container(node, resolve=True, throw_on_missing=False) if OmegaConf.is_config(node)
                  else dict(node))
        values.pop("_target_", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TIError(f"{cls.GROUP}.{unknown[0]} is not a setting of {cls.GROUP}",
                          f"use one of {', '.join(sorted(known))}")
        return cls(**values)


def _check(key: str, value, hint, meta) -> None:
    options = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    allow_none = type(None) in options
    kind = next(o for o in options if o is not type(None))
    if value is None and allow_none:
        return
    minimum, positive, example = meta.get("minimum"), meta.get("positive"), meta.get("example")
    null = " or null" if allow_none else ""
    if get_origin(kind) is Literal:
        choices = [str(c) for c in get_args(kind)]
        if value not in get_args(kind):
            raise TIError(f"{key}={value!r} is unknown", f"use {', '.join(choices[:-1])} or {choices[-1]}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise TIError(f"{key}={value!r} is not true or false", f"use e.g. {key}={example or 'true'}")
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
        if not ok:
            what = "an integer" + (f" >= {minimum}" if minimum is not None else "") + null
            raise TIError(f"{key}={value!r} is not {what}", f"use e.g. {key}={example}")
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (not positive or value > 0) and (minimum is None or value >= minimum)
        if not ok:
            what = ("a positive number" if positive else "a number") + null
            raise TIError(f"{key}={value!r} is not {what}", f"use e.g. {key}={example}")
    elif kind is str:
        if not isinstance(value, str):
            raise TIError(f"{key}={value!r} is not a string{null}", f"use e.g. {key}={example}")
