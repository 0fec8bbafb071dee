"""Every trainable system, found through the ``aver.systems`` entry points: aver's own three
(DE-III, Mocanu 2023, AVT-CA; declared in aver's ``pyproject.toml``) and any a lab installs.

Registry key = ``aver train --model`` choice = ``TrainConfig.system`` = the name a run records.
The contract a system meets is ``aver.train.system.System``; nothing outside a system's own module
names it (``tests/test_systems.py`` checks).
"""

from __future__ import annotations

import logging
from typing import Any

from aver.errors import ConfigError
from aver.plugins import PluginRegistry
from aver.registry import unknown_choice

from .system import System

log = logging.getLogger(__name__)
GROUP = "aver.systems"


class SystemRegistry(PluginRegistry[System]):
    """The systems: the ``aver.systems`` entry points are loaded on the first lookup (aver's own
    first, so a plugin never takes a built-in's name)."""

    def __init__(self) -> None:
        super().__init__("model", GROUP)

    def summary(self, name: str) -> str:
        return self.get(name).summary

    def default_name(self) -> str:
        """The system flagged ``default`` (the CLI default; runs from before systems were recorded)."""
        found = [n for n, s in self.items() if s.default]
        if len(found) != 1:
            raise ConfigError(f"exactly one system must be the default; found {found or 'none'}")
        return found[0]


SYSTEMS = SystemRegistry()


def register_system(cls: type[System]) -> type[System]:
    """Class decorator: ``@register_system`` on a ``System`` subclass adds one instance under
    ``cls.name``. A name taken already is refused (a plugin never replaces a built-in)."""
    missing = [
        a
        for a in ("name", "summary", "paper", "trains_on", "config_class", "presets", "variants")
        if not hasattr(cls, a)
    ]
    if missing:
        raise TypeError(f"system {cls.__name__} does not declare {missing} (aver.train.system.System)")
    if cls.default_variant not in cls.variants:
        raise TypeError(f"system {cls.name}: default_variant {cls.default_variant!r} is not a variant")
    SYSTEMS.add(cls.name, cls())
    return cls


def system_of(info: dict[str, Any]) -> System:
    """The system a run or checkpoint records (runs from before aver recorded one: the default)."""
    return SYSTEMS.get(info.get("system") or SYSTEMS.default_name())


def variants(system: str) -> dict[str, Any]:
    """Variant name -> ``Variant`` of ``system``."""
    return dict(SYSTEMS.get(system).variants.items())


def check_variant(system: str, variant: str) -> None:
    names = SYSTEMS.get(system).variants.names()
    if variant not in names:
        raise ConfigError(unknown_choice(f"{system} variant", variant, names))


def config_fields(system: str) -> list[str]:
    """Model fields ``--set model.KEY=...`` may change for ``system``."""
    return SYSTEMS.get(system).model_fields()


class _PresetNames:
    """The preset names of every system (``aver train --preset`` choices; each system checks its own)."""

    def names(self) -> list[str]:
        return sorted({p for _, system in SYSTEMS.items() for p in system.presets.names()})


PRESET_NAMES = _PresetNames()
