"""Third-party plugins: entry points that add names to an aver registry, loaded lazily and safely.

A lab adds a dataset adapter (group ``aver.datasets``) or a model (``aver.systems``) by installing
a package whose ``pyproject.toml`` declares, e.g.::

    [project.entry-points."aver.datasets"]
    mylab_corpus = "aver_mylab_corpus"          # a module that registers itself on import
    # or: mylab_corpus = "aver_mylab_corpus:ADAPTER"   (an object, added under the entry point's name)

as timm's ``register_model`` and pytest's ``pytest11`` do. The entry point's name is the registry
key (= CLI choice = name on record). Plugins are imported on the registry's first lookup, never at
``import aver``, so ``aver --help`` stays instant and an unrelated command never runs foreign code.

A broken plugin (its import fails or raises, it registers nothing under its entry point's name, its
name is taken by a built-in or an earlier plugin, ``check`` rejects it) is named in ONE warning line
with the cause and the plugin's file and line (the traceback at DEBUG level), whatever it
registered is taken out again, and every other name, built-in or plugin, works as before. A clash
never replaces a built-in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from aver.registry import Registry

log = logging.getLogger(__name__)

T = TypeVar("T")

# (group, id(registry)) -> (registry, names loaded); the registry is kept so that its id is never reused.
_LOADED: dict[tuple[str, int], tuple[Registry, list[str]]] = {}
_LOCK = threading.RLock()
HOST = "aver"  # the distribution whose own entry points are built-ins, loaded first


def load_entry_points(
    group: str, registry: Registry, *, check: Callable[[str, Any], None] | None = None
) -> list[str]:
    """Load the plugins of entry-point ``group`` into ``registry``, once; return the names loaded.

    Each entry point ``name = "module"`` is imported and must register ``name`` itself (e.g. with
    a ``@register_...("name")`` decorator); ``name = "module:attr"`` may instead name the object,
    which is then added as ``name``. ``check(name, obj)``, when given, vets what was registered
    (raise to reject it). Built-ins are the names in ``registry`` before the first call and those
    of aver's own entry points (distribution ``aver``, loaded before any other): an entry point
    of another distribution with such a name is refused without importing it.

    Idempotent: later calls for the same ``(group, registry)`` return the first call's names
    without looking at entry points again (a call made while plugins are loading, e.g. by a plugin
    that looks the registry up at import, returns at once). Never raises for a plugin's fault.
    """
    key = (group, id(registry))
    with _LOCK:
        if key in _LOADED:
            return list(_LOADED[key][1])
        loaded: list[str] = []
        _LOADED[key] = (registry, loaded)  # before importing anything: re-entrant calls stop here
        builtins = set(Registry.names(registry))
        owners: dict[str, EntryPoint] = {}
        found = sorted(entry_points(group=group), key=lambda e: (not _is_host(e), e.name, _dist(e)))
        host = {e.name for e in found if _is_host(e)}
        for ep in found:
            if _is_host(ep) and ep.name in builtins:
                continue  # aver's own module was imported before the first lookup: nothing to do
            cause = _refusal(ep, registry, builtins, owners)
            if cause is None:
                cause = _load_one(ep, registry, check, keep=host - {ep.name})
            if cause is None:
                loaded.append(ep.name)
                owners[ep.name] = ep
                if _is_host(ep):
                    builtins.add(ep.name)
            else:
                log.warning("aver: plugin %s not loaded: %s", _describe(ep), cause)
        if loaded:
            log.debug("%s plugins loaded: %s", group, ", ".join(loaded))
        return list(loaded)


class PluginRegistry(Registry[T]):
    """A ``Registry`` whose entry-point plugins (group ``group``) join it on its first lookup.

    Registration (``register``/``add``) never triggers loading, so built-ins register at import as
    before; every lookup (``get``, ``check``, ``names``, ``items``, ``in``, iteration, ``len``)
    first calls ``load_plugins()``.
    """

    def __init__(self, kind: str, group: str, check: Callable[[str, Any], None] | None = None) -> None:
        super().__init__(kind)
        self.group, self._check = group, check

    def load_plugins(self) -> list[str]:
        """Load this registry's plugins (once); the names they added."""
        return load_entry_points(self.group, self, check=self._check)

    def get(self, name: str) -> T:
        self.load_plugins()
        return super().get(name)

    def names(self) -> list[str]:
        self.load_plugins()
        return super().names()

    def items(self) -> list[tuple[str, T]]:
        self.load_plugins()
        return super().items()

    def summary(self, name: str) -> str:
        self.load_plugins()
        return super().summary(name)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return super().__contains__(name)

    def __iter__(self):
        self.load_plugins()
        return super().__iter__()

    def __len__(self) -> int:
        self.load_plugins()
        return super().__len__()


def _refusal(
    ep: EntryPoint, registry: Registry, builtins: set[str], owners: dict[str, EntryPoint]
) -> str | None:
    """Why ``ep`` must not even be imported, or None."""
    if ep.name in builtins:
        return (
            f"its name {ep.name!r} is a built-in {registry.kind}; the built-in is kept "
            "(rename the entry point)"
        )
    if ep.name in owners:
        return f"{ep.name!r} is already provided by {_describe(owners[ep.name])}; that one is kept"
    return None


def _load_one(
    ep: EntryPoint,
    registry: Registry,
    check: Callable[[str, Any], None] | None,
    keep: set[str] = frozenset(),
) -> str | None:
    """Import ``ep`` and make sure it registered its name; on failure undo it (except the ``keep``
    names: aver's own, which a broken module may have imported on its way) and return the cause."""
    before = set(Registry.names(registry))
    try:
        obj = ep.load()
        if ep.name not in Registry.names(registry):
            if not ep.attr:  # a plain module: it had to register itself
                added = sorted(set(Registry.names(registry)) - before)
                raise LookupError(
                    f"importing {ep.value!r} registered no {registry.kind} named {ep.name!r} "
                    f"(it registered {added or 'nothing'})"
                )
            registry.add(ep.name, obj)
        if check is not None:
            check(ep.name, Registry.get(registry, ep.name))
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 — any fault of a plugin, SystemExit included, is reported
        log.debug("plugin %s failed", _describe(ep), exc_info=True)
        _undo(registry, before | keep)
        return " ".join(f"{type(e).__name__}: {e}{_where(e)}".split())  # one line, whatever the message
    return None


def _where(exc: BaseException) -> str:
    """`` (at FILE:LINE)``: the innermost frame of the plugin's own code in ``exc``'s traceback
    (neither aver's nor importlib's), standing in for the traceback that argparse-time loading
    cannot show."""
    where, tb = "", exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".")[0] not in (
            "aver",
            "importlib",
            "_frozen_importlib",
            "_frozen_importlib_external",
        ):
            where = f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where


def _undo(registry: Registry, before: set[str]) -> None:
    """Take out every name registered since ``before`` (what a broken plugin left behind).

    Registry has no public removal: only plugin loading may take a name out again.
    """
    for name in set(Registry.names(registry)) - before:
        registry._items.pop(name, None)


def _is_host(ep: EntryPoint) -> bool:
    """Whether ``ep`` is aver's own (its built-ins may register through entry points too)."""
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.name.lower().replace("_", "-") == HOST


def _dist(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _describe(ep: EntryPoint) -> str:
    """``'mylab' (entry point mylab = aver_mylab in group aver.datasets, distribution aver-mylab 0.1)``."""
    return f"{ep.name!r} (entry point {ep.name} = {ep.value} in group {ep.group}, distribution {_dist(ep)})"
