"""One override syntax for every config: ``--set section.key=VALUE`` (repeatable).

Values are parsed as JSON when they are JSON (``3``, ``0.5``, ``true``, ``[12,18]``, ``null``),
else kept as strings. Keys are checked against the dataclass fields: a typo is a ``ConfigError``
naming the known keys (and the closest one), before any work is done; so is a value of the wrong
type for a scalar field (``--set lr=abc``: the key, the value and the type it must be). A field
whose value is a free dict (e.g. ``TrainConfig.model``) accepts any key; its owner validates it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Any, TypeVar

from aver.errors import ConfigError
from aver.registry import unknown_choice

C = TypeVar("C")


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_kv(items: list[str], what: str = "option") -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; an item without ``=`` is a ``ConfigError``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} must look like KEY=VALUE")
        out[key.strip()] = parse_value(value)
    return out


def apply_overrides(cfg: C, items: list[str] | dict[str, Any]) -> C:
    """A copy of dataclass ``cfg`` with dotted-path overrides applied, rebuilt (and so validated).

    A value of the wrong type for a scalar field is refused here, by key, value and expected type
    (``check_value``), before ``__post_init__`` could compare text with a number."""
    if isinstance(items, dict):
        triples = [(path, value, None) for path, value in items.items()]
    else:
        triples = [(path, value, raw) for path, (value, raw) in _parse_items(list(items)).items()]
    data = dataclasses.asdict(cfg)
    for path, value, raw in triples:
        _assign(type(cfg), data, path.split("."), value, path, raw)
    return from_dict(type(cfg), data)


def _parse_items(items: list[str]) -> dict[str, tuple[Any, str]]:
    """``["a=1"]`` -> ``{"a": (1, "1")}``: each override's parsed value and the text it came from."""
    raw = {}
    for item in items:
        key, _, value = item.partition("=")
        raw[key.strip()] = value
    return {key: (value, raw[key]) for key, value in parse_kv(items, "override").items()}


def _assign(cls: Any, node: dict, keys: list[str], value: Any, path: str, raw: str | None = None) -> None:
    key, rest = keys[0], keys[1:]
    if cls is not None:
        names = [f.name for f in dataclasses.fields(cls)]
        if key not in names:
            raise ConfigError(f"--set {path}: " + unknown_choice("key", key, names))
        sub = _field_types(cls)[key]
    else:
        sub = None
    if not rest:
        node[key] = value if sub is None else check_value(path, value, sub, raw)
        return
    child = node.get(key)
    if not isinstance(child, dict):
        raise ConfigError(f"--set {path}: {key!r} is a value, not a section")
    _assign(sub if dataclasses.is_dataclass(sub) else None, child, rest, value, path, raw)


# What a scalar field's value must be, named as the refusal names it.
_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def check_value(path: str, value: Any, hint: Any, raw: str | None = None) -> Any:
    """``value`` for the field ``path`` of type ``hint``, or a ``ConfigError`` naming the key, the
    value and the expected type (``--set lr=abc``: ``lr`` is a number, not the text ``'abc'``).

    Only scalar fields are judged (``bool``, ``int``, ``float``, ``str``, optionally ``| None``);
    containers and other types are left to the owner's ``__post_init__``, which knows their forms
    (``audio.layers`` takes a list, one index or a slice text). A ``str`` field given text that
    parses as JSON (``--set flow.variant=2``) keeps the text as written (``raw``)."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    scalars = [t for t in options if t in _SCALARS]
    if not scalars or any(t not in _SCALARS and t is not type(None) for t in options):
        return value
    if value is None and type(None) in options:
        return value
    if str in scalars and isinstance(value, os.PathLike):
        return os.fspath(value)
    if str in scalars and raw is not None and not isinstance(value, str) and value is not None:
        return raw
    for t in scalars:
        if _fits(value, t):
            return value
    want = " or ".join(_SCALARS[t] for t in scalars) + (" or null" if type(None) in options else "")
    shown = f"the text {value!r}" if isinstance(value, str) else json.dumps(value, default=repr)
    written = raw if raw is not None else json.dumps(value, default=repr)
    raise ConfigError(f"--set {path}={written}: {path} must be {want}, not {shown}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _fits(value: Any, t: type) -> bool:
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def _field_types(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build dataclass ``cls`` from a dict, recursing into fields that are dataclasses.

    Unknown keys are a ``ConfigError``; the dataclass's ``__post_init__`` validates the values.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: " + unknown_choice("key", unknown[0], sorted(names)))
    types = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        sub = types[key]
        kwargs[key] = (
            from_dict(sub, value) if dataclasses.is_dataclass(sub) and isinstance(value, dict) else value
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{cls.__name__}: {e}") from e
