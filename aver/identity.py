"""Which store a path or URL names: one identity for every spelling of the same store.

A store can be reached through many spellings: a relative or absolute path, a symlink, a path with
``..`` or a trailing slash, a ``file://`` URL; ``s3://b/x.zarr`` and ``s3://b/x.zarr/`` (or
``s3a://``). ``store_identity`` maps them all to one string, so that the cache tools can refuse to
write into one of their own sources (``refuse_overlap``) and a run's lease is keyed by the store,
not by the spelling that reached it (``aver.lease``).

The identity ignores storage options (endpoints, credentials): two spellings of one bucket path are
taken to be the same store even under different options. For a refusal that errs on the safe side.
"""

from __future__ import annotations

import os

from aver.errors import UserError

LOCAL = ("file", "local")


class SameStoreError(UserError):
    """A cache tool was asked to write into one of the stores it reads (or into or around one)."""


def _split(url: str) -> tuple[str, str]:
    """(protocol, path) of the target of a possibly chained URL (``simplecache::s3://...``);
    protocol ``file`` for a plain path."""
    url = str(url).split("::")[-1]
    if "://" not in url:
        return "file", url
    protocol, _, rest = url.partition("://")
    return protocol.lower(), rest


def is_local(url: str) -> bool:
    """True for a plain path and a ``file://`` / ``local://`` URL."""
    return _split(url)[0] in LOCAL


def local_path(url: str) -> str:
    """The resolved local path of a plain path or ``file://`` URL: absolute, symlinks and ``..``
    resolved, no trailing slash (``os.path.realpath``; the path need not exist yet)."""
    protocol, path = _split(url)
    if protocol not in LOCAL:
        raise ValueError(f"{url} is not a local path")
    return os.path.realpath(os.path.expanduser(path))


def store_identity(url: str, storage_options: dict | None = None) -> str:
    """One string per store: ``file://<realpath>`` for local paths, else ``<protocol>://<path>``
    with the filesystem's own protocol alias (``s3a`` -> ``s3``) and path normalisation (no
    trailing slash). ``storage_options`` are accepted for symmetry and not part of the identity."""
    del storage_options
    protocol, path = _split(url)
    if protocol in LOCAL:
        return "file://" + local_path(url)
    import fsspec

    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError):  # an unknown or uninstalled backend: the spelling, tidied
        return f"{protocol}://{path.strip('/')}"
    canonical = cls.protocol[0] if isinstance(cls.protocol, tuple | list) else cls.protocol
    return f"{canonical}://{cls._strip_protocol(f'{protocol}://{path}').rstrip('/')}"


def _inside(inner: str, outer: str) -> bool:
    return inner.startswith(outer.rstrip("/") + "/")


def same_store(a: str, b: str, options_a: dict | None = None, options_b: dict | None = None) -> bool:
    """True when ``a`` and ``b`` name the same store."""
    return store_identity(a, options_a) == store_identity(b, options_b)


def refuse_overlap(
    command: str,
    sources: list[str],
    dest: str,
    storage_options: dict | None = None,
    dest_options: dict | None = None,
) -> None:
    """Raise ``SameStoreError`` when ``dest`` is one of ``sources``, lies inside one, or holds
    one: writing it would destroy what is being read. Touches nothing (no store is opened)."""
    where = store_identity(dest, dest_options)
    for src in sources:
        ident = store_identity(src, storage_options)
        if ident == where:
            why = f"is the source {src}" + ("" if src == dest else f" (both are {ident})")
        elif _inside(where, ident):
            why = f"lies inside the source {src}"
        elif _inside(ident, where):
            why = f"holds the source {src}"
        else:
            continue
        raise SameStoreError(
            f"aver cache {command}: the destination {dest} {why}: writing it would destroy what is "
            "being read; choose a destination outside every source"
        )
