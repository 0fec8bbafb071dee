"""One registry idiom for every set of alternatives: registry key = CLI choice = name on record.

Datasets, flow backends, extraction and training presets, model variants, sequence encoders,
visual front-ends, prediction heads and tasks are all ``Registry`` objects. An unknown name is a
``ConfigError`` listing the choices (and the closest match), raised before any work is done.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from aver.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually factories), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ConfigError(unknown_choice(self.kind, name, self.names())) from None

    def check(self, name: str) -> str:
        """``name`` if registered, else the ``ConfigError`` of ``get``."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def summary(self, name: str) -> str:
        """First line of the registered object's docstring."""
        doc = (getattr(self._items[name], "__doc__", None) or "").strip().splitlines()
        return doc[0] if doc else ""

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def unknown_choice(kind: str, name: object, choices: list[str]) -> str:
    """``unknown preset 'papr' (did you mean 'paper'?); choose one of: paper, tiny``."""
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; choose one of: {', '.join(choices)}"


class LazyChoices:
    """argparse ``choices`` backed by a registry that is imported only when needed.

    ``aver --help`` must not import torch; ``aver train --variant X`` checks ``X`` against
    ``aver.train.models.variants.VARIANTS`` at parse time, before any work.
    """

    def __init__(self, module: str, attr: str, extra: tuple[str, ...] = ()) -> None:
        self.module, self.attr, self.extra = module, attr, extra

    def _names(self) -> list[str]:
        return [*self.extra, *getattr(importlib.import_module(self.module), self.attr).names()]

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())
