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

from ..errors import TIError

__all__ = ["FactorySettings", "Literal", "Settings", "bound", "build", "node_values"]


def bound(default: Any = MISSING, *, factory: Any = MISSING, minimum: float | None = None, positive: bool = False,
          maximum: float | None = None, example: str = "") -> Any:
    """A field with a range: `minimum` (inclusive) or `positive` (> 0), `maximum` (inclusive), and the example
    the fix names (`factory` for a mutable default, as dataclasses' default_factory)."""
    return field(default=default, default_factory=factory,
                 metadata={"minimum": minimum, "positive": positive, "maximum": maximum, "example": example})


# Seeds seed numpy too (Accelerate's set_seed), whose seeds are 32-bit: one range for every seed
SEED_MAX = 2**32 - 1


def seed_bound(default: int = 0) -> Any:
    return bound(default, minimum=0, maximum=SEED_MAX, example="0")



# Hydra's keys of a node that are not settings: what to build, and how
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


@dataclass
class Settings:
    """Base of the typed config groups; subclasses set GROUP (the key prefix the messages name)."""

    GROUP: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = _plain(getattr(self, f.name))
            setattr(self, f.name, value)
            _check(self.key(f.name), value, hints[f.name], f.metadata)

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.GROUP}.{name}" if cls.GROUP else name

    @classmethod
    def from_node(cls, node):
        """The settings of a config node (resolved); a key the dataclass does not know is an error."""
        values = node_values(node)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TIError(f"{cls.key(unknown[0])} is not a setting of {cls.GROUP}",
                          f"use one of {', '.join(sorted(known))}")
        return cls(**values)


def node_values(node) -> dict:
    """A config node's settings as plain values (resolved), without Hydra's own keys."""
    # a mandatory value still missing (`???`) is reported where it is used, with its own hint
    values = _plain(node) if node is not None else {}
    return {k: v for k, v in dict(values).items() if k not in HYDRA_KEYS}


def _plain(value):
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
    return value


@dataclass
class FactorySettings(Settings):
    """A node that builds a callable's result (`_target_`, `_partial_`: an optimizer, a schedule): the
    declared fields are checked by type; every key, declared or not, must be an argument of the target,
    and an undeclared one must have the type of the target's default."""

    EXAMPLE_TARGET: ClassVar[str] = ""
    # arguments the code fills in (the parameters, the optimizer, the number of steps)
    SUPPLIED: ClassVar[tuple[str, ...]] = ()

    # the callable the node names (`_target_`), and every argument it gives, declared above or not
    target: str = bound("", example="torch.optim.AdamW")
    arguments: dict = bound(factory=dict, example="{...}")

    def build(self, **supplied):
        """The object these settings describe: the target called with the node's arguments and what the
        code supplies (parameters, an optimizer, a number of steps), which wins over the node."""
        return build({"_target_": self.target, "_partial_": True, **self.arguments})(**supplied)

    @classmethod
    def from_node(cls, node):
        import inspect

        raw = dict(_plain(node) or {})
        target = str(raw.get("_target_", ""))
        values = {k: v for k, v in raw.items() if k not in HYDRA_KEYS}
        try:
            parameters = inspect.signature(_locate(target)).parameters
        except Exception:  # noqa: BLE001 - a target that does not import is the user's to fix
            raise TIError(f"{cls.key('_target_')}={target!r} cannot be imported",
                          f"use a callable's full path, e.g. {cls.key('_target_')}={cls.EXAMPLE_TARGET}") from None
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        declared = {f.name for f in fields(cls)} - {"target", "arguments"}
        for name, value in values.items():
            if name not in parameters and not open_ended:
                accepted = [n for n, p in parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY]
                raise TIError(f"{cls.key(name)} is not an argument of {target}", f"remove it, or use one of "
                              f"{', '.join(n for n in accepted if n not in cls.SUPPLIED)}")
            default = parameters[name].default if name in parameters else None
            if name not in declared and isinstance(default, (bool, int, float, str)):
                _check(cls.key(name), value, type(default), {"example": repr(default).lower()
                                                               if isinstance(default, bool) else repr(default)})
        return cls(**{k: v for k, v in values.items() if k in declared}, target=target, arguments=values)


def _locate(path: str):
    """The object a dotted path names (`torch.optim.AdamW`), imported quietly."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def _check(key: str, value, hint, meta) -> None:
    options = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    allow_none = type(None) in options
    kinds = [o for o in options if o is not type(None)]
    if value is None and allow_none:
        return
    errors = []
    for kind in kinds:
        try:
            _check_kind(key, value, kind, meta, " or null" if allow_none else "")
            return
        except TIError as exc:
            errors.append(exc)
    raise errors[0]


def _check_kind(key: str, value, kind, meta, null: str) -> None:
    minimum, positive, example = meta.get("minimum"), meta.get("positive"), meta.get("example")
    maximum = meta.get("maximum")
    if kind is typing.Any or kind is object:
        return
    if get_origin(kind) is Literal:
        choices = [str(c).lower() if isinstance(c, bool) else str(c) for c in get_args(kind)]
        if isinstance(value, (list, dict)) or value not in get_args(kind):
            raise TIError(f"{key}={value!r} is unknown", f"use {', '.join(choices[:-1])} or {choices[-1]}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise TIError(f"{key}={value!r} is not true or false", f"use e.g. {key}={example or 'true'}")
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
        ok = ok and (maximum is None or value <= maximum)
        if not ok:
            what = "an integer" + (f" between {minimum} and {maximum}" if minimum is not None and maximum is not None
                                   else f" >= {minimum}" if minimum is not None else "") + null
            raise TIError(f"{key}={value!r} is not {what}", f"use e.g. {key}={example}")
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (not positive or value > 0) and (minimum is None or value >= minimum)
        if not ok:
            what = ("a positive number" if positive else "a number" + (f" >= {minimum}" if minimum is not None
                                                                          else "")) + null
            raise TIError(f"{key}={value!r} is not {what}", f"use e.g. {key}={example}")
    elif kind is str:
        if not isinstance(value, str):
            raise TIError(f"{key}={value!r} is not a string{null}", f"use e.g. {key}={example}")
    elif kind is list or get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            raise TIError(f"{key}={value!r} is not a list{null}", f"use e.g. {key}={example or '[...]'}")
        item = (get_args(kind) or (object,))[0]
        for i, element in enumerate(value):
            try:
                _check_kind(f"{key}[{i}]", element, item, {}, "")
            except TIError as exc:
                raise TIError(exc.problem, f"use e.g. {key}={example or '[...]'}") from None
    elif kind is dict or get_origin(kind) is dict:
        if not isinstance(value, dict):
            raise TIError(f"{key}={value!r} is not a config node{null}", f"use e.g. {key}={example or '{...}'}")


def build(node, **kwargs):
    """`instantiate`, but a user error raised by the target reaches the user as itself, not wrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, TIError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
