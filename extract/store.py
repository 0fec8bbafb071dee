"""The cache writer: one Zarr v3 store per dataset, laid out as ``cache_layout.md`` specifies.

Protocol (after xarray-beam): ``create_or_open`` writes a metadata-only template (every array,
the clip table, the folds, the provenance) before any clip is processed. Each clip then owns
exactly one chunk of every per-clip array, so writers on many processes or machines never touch
the same object. A clip is committed by writing its data chunks first and its ``clips/status``
chunk last: a run killed at any moment leaves the clip ``pending`` and a rerun rewrites it.
Every write is idempotent (same inputs, same bytes), so resuming yields the arrays of an
uninterrupted run.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CacheMismatchError, ConfigError

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}


@dataclass
class Capacity:
    """Padded lengths of the per-clip time axes (frames at native rate; audio at ``audio_rate_hz``)."""

    frames: int
    audio: int


@dataclass
class ClipResult:
    """Everything one finished clip writes. T = frames, P = flow maps, A = audio frames, L = layers."""

    frame_features: np.ndarray  # float16 [T, D_img]
    flow_features: np.ndarray  # float16 [P, D_img]
    audio_features: np.ndarray  # float16 [A, L, D_audio]
    timestamps: np.ndarray  # float32 [T] seconds
    face_box: np.ndarray  # float32 [T, 4] x1, y1, x2, y2 in source pixels (smoothed crop box)
    face_prob: np.ndarray  # float32 [T]
    face_mask: np.ndarray  # bool [T] True where MTCNN detected the face (else filled)
    fps: float


def open_root(url: str, mode: str, storage_options: dict | None = None):
    """A zarr group at a local path or an fsspec URL (s3://, gs://, memory://, ...)."""
    import zarr

    return zarr.open_group(url, mode=mode, storage_options=storage_options or None, zarr_format=3)


def store_exists(url: str, storage_options: dict | None = None) -> bool:
    import zarr

    try:
        zarr.open_group(url, mode="r", storage_options=storage_options or None, zarr_format=3)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return False
    return True


def _table_arrays(g, index, n: int) -> None:
    """The clip table columns known before extraction (one chunk each)."""
    clips = index.clips
    g.create_array("clips/id", shape=(n,), dtype=str, chunks=(max(n, 1),))[:] = np.array(
        [c.clip_id for c in clips]
    )
    g.create_array("clips/speaker", shape=(n,), dtype=str, chunks=(max(n, 1),))[:] = np.array(
        [c.speaker for c in clips]
    )
    g.create_array("clips/video", shape=(n,), dtype=str, chunks=(max(n, 1),))[:] = np.array(
        [_relative(c.video, index.root) for c in clips]
    )
    g.create_array("clips/label", shape=(n,), dtype="int16", chunks=(max(n, 1),), fill_value=-1)[:] = (
        np.array([c.label for c in clips], dtype=np.int16)
    )
    if index.targets:
        t = g.create_array(
            "clips/targets",
            shape=(n, len(index.targets)),
            dtype="float32",
            chunks=(max(n, 1), len(index.targets)),
            fill_value=float("nan"),
            dimension_names=("clip", "target"),
        )
        t[:] = np.array([c.targets for c in clips], dtype=np.float32)
    if index.folds.size:
        f = g.create_array(
            "folds/split",
            shape=index.folds.shape,
            dtype="int8",
            chunks=index.folds.shape,
            fill_value=-1,
            dimension_names=("fold", "clip"),
        )
        f[:] = index.folds


def _relative(path: str, root: str) -> str:
    import os

    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _per_clip_arrays(g, n: int, cap: Capacity, dims: dict[str, int]) -> None:
    """Arrays written clip by clip: one chunk per clip along the first axis."""
    T, A = cap.frames, cap.audio
    d_img, d_aud, n_layers = dims["image"], dims["audio"], dims["audio_layers"]
    spec = {
        "clips/status": ((n,), "int8", 0, ("clip",)),
        "clips/n_frames": ((n,), "int32", 0, ("clip",)),
        "clips/n_flow": ((n,), "int32", 0, ("clip",)),
        "clips/n_audio": ((n,), "int32", 0, ("clip",)),
        "clips/fps": ((n,), "float32", 0.0, ("clip",)),
        "frames/features": ((n, T, d_img), "float16", 0.0, ("clip", "frame", "feature")),
        "frames/timestamp": ((n, T), "float32", 0.0, ("clip", "frame")),
        "frames/face_box": ((n, T, 4), "float32", 0.0, ("clip", "frame", "coord")),
        "frames/face_prob": ((n, T), "float32", 0.0, ("clip", "frame")),
        "frames/face_mask": ((n, T), "bool", False, ("clip", "frame")),
        "flow/features": ((n, T, d_img), "float16", 0.0, ("clip", "flow_frame", "feature")),
        "audio/features": (
            (n, A, n_layers, d_aud),
            "float16",
            0.0,
            ("clip", "audio_frame", "layer", "feature"),
        ),
    }
    from zarr.codecs import BloscCodec

    for name, (shape, dtype, fill, dim_names) in spec.items():
        chunks = (1, *shape[1:])
        compressors = BloscCodec(
            cname="zstd", clevel=3, shuffle="bitshuffle" if dtype == "float16" else "shuffle"
        )
        g.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            fill_value=fill,
            dimension_names=dim_names,
            compressors=compressors,
        )
    g.create_array(
        "clips/error", shape=(n,), dtype=str, chunks=(1,), fill_value="", dimension_names=("clip",)
    )


class CacheWriter:
    """Creates, validates and fills one dataset store. Safe to use from many processes at once,
    provided each clip index is written by one of them."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.storage_options = storage_options or {}
        self._g = None

    @property
    def group(self):
        if self._g is None:
            self._g = open_root(self.url, "r+", self.storage_options)
        return self._g

    @classmethod
    def create_or_open(
        cls,
        url: str,
        index,
        attrs: dict[str, Any],
        cap: Capacity,
        dims: dict[str, int],
        overwrite: bool = False,
        storage_options: dict | None = None,
    ) -> CacheWriter:
        """Write the template, or check that an existing store was made with the same config.

        Idempotent: opening an existing matching store changes nothing but the run log.
        Raises ``CacheMismatchError`` when the store exists with another config hash or clip list.
        """
        writer = cls(url, storage_options)
        if store_exists(url, storage_options) and not overwrite:
            writer._validate(index, attrs)
            return writer
        g = open_root(url, "w", storage_options)
        n = len(index.clips)
        _table_arrays(g, index, n)
        _per_clip_arrays(g, n, cap, dims)
        meta = dict(attrs)
        meta.update(
            layout_version=LAYOUT_VERSION,
            n_clips=n,
            capacity={"frames": cap.frames, "audio": cap.audio},
            created=_now(),
            runs=[],
        )
        g.attrs["aver"] = meta
        writer._g = g
        return writer

    def _validate(self, index, attrs: dict[str, Any]) -> None:
        g = self.group
        meta = g.attrs.get("aver")
        if not meta:
            raise ConfigError(
                f"{self.url} exists but is not an aver cache (no 'aver' attributes); "
                "choose another --cache or pass --overwrite"
            )
        if meta.get("config_hash") != attrs["config_hash"]:
            raise CacheMismatchError(
                f"{self.url} was made with config {meta.get('config_hash')} (preset {meta.get('preset')!r}); this run "
                f"has config {attrs['config_hash']} (preset {attrs.get('preset')!r}). Differences: "
                f"{_diff(meta.get('config', {}), attrs['config'])}. Refusing to mix results: pass --overwrite "
                "to start over, or write to another --cache."
            )
        ids = list(g["clips/id"][:])
        if ids != [c.clip_id for c in index.clips]:
            raise CacheMismatchError(
                f"{self.url} holds {len(ids)} clips but the dataset now lists {len(index.clips)} (or another "
                "order); the clip table would not match. Pass --overwrite to start over."
            )

    # -- run bookkeeping (driver only) -------------------------------------------------------
    def log_run(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` to the store's run log (``attrs.aver.runs``)."""
        meta = dict(self.group.attrs["aver"])
        meta["runs"] = [*meta.get("runs", []), {"time": _now(), **entry}]
        self.group.attrs["aver"] = meta

    def status(self) -> np.ndarray:
        """``int8 [N]`` commit status of every clip (0 pending, 1 done, 2 failed)."""
        return self.group["clips/status"][:]

    # -- per-clip writes (any process) -------------------------------------------------------
    def write_clip(self, i: int, r: ClipResult) -> None:
        """Commit clip ``i``: data chunks first, the status chunk last. Idempotent."""
        g = self.group
        cap_t, cap_a = g["frames/features"].shape[1], g["audio/features"].shape[1]
        t, p, a = len(r.frame_features), len(r.flow_features), len(r.audio_features)
        if t > cap_t or p > cap_t or a > cap_a:
            raise ValueError(
                f"clip {i}: {t} frames / {a} audio frames exceed the store capacity {cap_t}/{cap_a}"
            )
        g["frames/features"][i] = _pad(r.frame_features, cap_t)
        g["flow/features"][i] = _pad(r.flow_features, cap_t)
        g["audio/features"][i] = _pad(r.audio_features, cap_a)
        g["frames/timestamp"][i] = _pad(r.timestamps, cap_t)
        g["frames/face_box"][i] = _pad(r.face_box, cap_t)
        g["frames/face_prob"][i] = _pad(r.face_prob, cap_t)
        g["frames/face_mask"][i] = _pad(r.face_mask, cap_t)
        g["clips/n_frames"][i] = t
        g["clips/n_flow"][i] = p
        g["clips/n_audio"][i] = a
        g["clips/fps"][i] = r.fps
        g["clips/error"][i] = ""
        g["clips/status"][i] = DONE

    def write_failure(self, i: int, cause: str) -> None:
        """Record clip ``i`` as failed with ``cause``; its data chunks are reset to the fill value
        (zarr drops all-fill chunks), so a failed clip looks the same whatever was half-written."""
        g = self.group
        for name in (
            "frames/features",
            "flow/features",
            "audio/features",
            "frames/timestamp",
            "frames/face_box",
            "frames/face_prob",
            "frames/face_mask",
        ):
            arr = g[name]
            arr[i] = np.zeros(arr.shape[1:], dtype=arr.dtype)
        for name in ("clips/n_frames", "clips/n_flow", "clips/n_audio", "clips/fps"):
            g[name][i] = 0
        g["clips/error"][i] = cause
        g["clips/status"][i] = FAILED


def _pad(x: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((length, *x.shape[1:]), dtype=x.dtype)
    out[: len(x)] = x
    return out


def _diff(old: dict, new: dict, prefix: str = "") -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _diff(a, b, f"{prefix}{key}.")
            if sub != "none":
                changes.append(sub)
        elif a != b and not (
            isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b)
        ):
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(changes) if changes else "none"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
