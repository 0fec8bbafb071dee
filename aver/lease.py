"""One writer per store: a lease object next to the store, kept alive by a heartbeat.

Two ``aver extract`` runs on one store would duplicate work and race on the run log (a
read-modify-write of ``attrs.aver``). The driver of a run therefore holds a lease,
``<store>.lease.json`` (a sibling of the store, so ``--overwrite`` never deletes it), refreshed
every ``ttl_s / 4`` seconds. A second driver that finds a live lease (heartbeat younger than
``ttl_s``) is refused with the owner named; a lease whose heartbeat stopped (a killed run) is
taken over (at once when its owner ran on this machine and its process is gone). The lease is
keyed by the store's identity (``aver.identity``): a symlink, a relative path or a ``file://`` URL
of a store finds the lease beside its real path. Works on local paths and fsspec URLs: the owner
is re-read after writing, so two drivers starting in the same instant on an object store still end
with one owner (the last write wins and the other is refused).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from aver.errors import UserError
from aver.identity import is_local, local_path, store_identity

log = logging.getLogger(__name__)


class StoreBusyError(UserError):
    """Another run is writing this store."""

    exit_code = 7


def _dead_here(held: dict) -> bool:
    """True when the owner ran on this machine and its process is gone (a killed run): its lease
    is taken over at once instead of after ``ttl_s``."""
    host, _, rest = str(held.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours to signal
        return False
    return False


def lease_url(store: str) -> str:
    """The lease object of ``store``, keyed by the store, not by the spelling that reached it: a
    local store's lease lies beside its real path (symlinks, ``..``, ``file://`` and trailing
    slashes resolved), a URL's beside its normalised URL, so every path to one store finds one lease."""
    if "::" in store:  # a chained URL: its storage options are keyed by each protocol
        return store.rstrip("/") + ".lease.json"
    if is_local(store):
        return local_path(store) + ".lease.json"
    return store_identity(store) + ".lease.json"


class StoreLease:
    """``with StoreLease(url, storage_options):`` holds the store for this process."""

    def __init__(self, store: str, storage_options: dict | None = None, ttl_s: float = 120.0) -> None:
        import fsspec

        self.store, self.ttl_s = store, float(ttl_s)
        self.fs, self.path = fsspec.core.url_to_fs(lease_url(store), **(storage_options or {}))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict | None:
        try:
            data = json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def _write(self) -> None:
        body = {"owner": self.owner, "started": self.started, "heartbeat": time.time(), "ttl_s": self.ttl_s}
        parent = self.path.rsplit("/", 1)[0]
        if parent and parent != self.path:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(self.path, json.dumps(body).encode())

    def acquire(self) -> StoreLease:
        held = self.read()
        fresh = held and time.time() - float(held.get("heartbeat", 0)) < self.ttl_s
        if fresh and held.get("owner") != self.owner and not _dead_here(held):
            raise self._busy(held)
        if held:
            log.warning(
                "taking over the lease of %s from %s (its run stopped; last heartbeat %.0f s ago)",
                self.store,
                held.get("owner"),
                time.time() - float(held.get("heartbeat", 0)),
            )
        self._write()
        now = self.read()
        if not now or now.get("owner") != self.owner:
            raise self._busy(now or {})
        self._thread = threading.Thread(target=self._beat, name="aver-lease", daemon=True)
        self._thread.start()
        return self

    def _busy(self, held: dict) -> StoreBusyError:
        age = time.time() - float(held.get("heartbeat", time.time()))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("started", time.time()))))
        return StoreBusyError(
            f"{self.store} is being written by another run ({held.get('owner')}, since {since}, heartbeat "
            f"{age:.0f} s ago): wait for it to finish; if it died, rerun after {self.ttl_s:.0f} s "
            f"(or delete {lease_url(self.store)})"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if (self.read() or {}).get("owner") != self.owner:
                    log.error("lost the lease of %s to another run", self.store)
                    return
                self._write()
            except OSError as e:  # a transient object-store error: try again at the next beat
                log.warning("lease heartbeat for %s failed: %s", self.store, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (self.read() or {}).get("owner") == self.owner:
                self.fs.rm_file(self.path)
        except OSError as e:
            log.warning("could not remove the lease %s: %s", lease_url(self.store), e)

    def __enter__(self) -> StoreLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
