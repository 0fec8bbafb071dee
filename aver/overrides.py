"""One override syntax for every config: ``--set section.key=VALUE`` (repeatable).

Values are parsed as JSON when they are JSON (``3``, ``0.5``, ``true``, ``[12,18]``, ``null``),
else kept as strings. Keys are checked against the dataclass fields: a typo is a ``ConfigError``
naming the known keys (and the closest one), before any work is done. A field whose value is a free
dict (e.g. ``TrainConfig.model``) accepts any key; its owner validates it.
"""

from __future__ import annotations

import dataclasses
import json
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
    """A copy of dataclass ``cfg`` with dotted-path overrides applied, rebuilt (and so validated)."""
    pairs = items.items() if isinstance(items, dict) else parse_kv(list(items), "override").items()
    data = dataclasses.asdict(cfg)
    for path, value in pairs:
        _assign(type(cfg), data, path.split("."), value, path)
    return from_dict(type(cfg), data)


def _assign(cls: Any, node: dict, keys: list[str], value: Any, path: str) -> None:
    key, rest = keys[0], keys[1:]
    if cls is not None:
        names = [f.name for f in dataclasses.fields(cls)]
        if key not in names:
            raise ConfigError(f"--set {path}: " + unknown_choice("key", key, names))
        sub = _field_types(cls)[key]
    else:
        sub = None
    if not rest:
        node[key] = value
        return
    child = node.get(key)
    if not isinstance(child, dict):
        raise ConfigError(f"--set {path}: {key!r} is a value, not a section")
    _assign(sub if dataclasses.is_dataclass(sub) else None, child, rest, value, path)


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
