"""Read-only access to a feature cache, as ``cache_layout.md`` specifies (no extraction code).

Opening a cache reads arrays and JSON only; nothing in it can execute code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SUPPORTED_LAYOUT = 1
SPLITS = {"train": 0, "validation": 1, "test": 2}


class CacheError(ValueError):
    """The cache is missing, of an unsupported layout, or lacks what was asked for."""


@dataclass
class ClipFeatures:
    """One clip's valid rows. T frames, P flow maps, A audio frames, L layers."""

    clip_id: str
    frames: np.ndarray  # float16 [T, D_img]
    flow: np.ndarray  # float16 [P, D_img]
    audio: np.ndarray  # float16 [A, L, D_audio]
    label: int  # -1 when the corpus has no classes
    targets: np.ndarray  # float32 [K] (empty when the corpus has no targets)


class FeatureCache:
    """A cache opened for reading: the clip table and folds in memory, features read per clip."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        import zarr

        try:
            self.group = zarr.open_group(
                url, mode="r", storage_options=storage_options or None, zarr_format=3
            )
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise CacheError(f"no cache at {url}: run `aver extract` first, or check the path/URL") from None
        meta = self.group.attrs.get("aver")
        if not meta:
            raise CacheError(f"{url} is a Zarr store but not an aver cache (no 'aver' attributes)")
        if meta.get("layout_version") != SUPPORTED_LAYOUT:
            raise CacheError(
                f"{url} has cache layout v{meta.get('layout_version')}; this aver reads v{SUPPORTED_LAYOUT}"
            )
        self.url = url
        self.meta: dict[str, Any] = meta
        g = self.group
        self.ids = np.asarray(g["clips/id"][:])
        self.speakers = np.asarray(g["clips/speaker"][:])
        self.labels = g["clips/label"][:].astype(np.int64)
        self.targets = (
            g["clips/targets"][:] if "targets" in g["clips"] else np.zeros((len(self.ids), 0), np.float32)
        )
        self.status = g["clips/status"][:]
        self.lengths = {k: g[f"clips/n_{k}"][:] for k in ("frames", "flow", "audio")}
        self.folds = g["folds/split"][:] if "folds" in g else np.zeros((0, len(self.ids)), np.int8)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def target_names(self) -> list[str]:
        return list(self.meta["targets"])

    @property
    def n_folds(self) -> int:
        return int(self.folds.shape[0])

    def split_indices(self, fold: int, split: str) -> np.ndarray:
        """Indices of the committed clips of ``split`` in ``fold`` (1-based, as papers count)."""
        if not 1 <= fold <= self.n_folds:
            raise CacheError(f"{self.url} has folds 1..{self.n_folds}; fold {fold} does not exist")
        if split not in SPLITS:
            raise CacheError(f"split must be one of {list(SPLITS)}, not {split!r}")
        return np.flatnonzero((self.folds[fold - 1] == SPLITS[split]) & (self.status == 1))

    def clip(self, i: int) -> ClipFeatures:
        """The valid rows of clip ``i`` (a committed clip; others raise ``CacheError``)."""
        if self.status[i] != 1:
            raise CacheError(
                f"clip {self.ids[i]} of {self.url} is not extracted (status {int(self.status[i])})"
            )
        g, n = self.group, {k: int(v[i]) for k, v in self.lengths.items()}
        return ClipFeatures(
            clip_id=str(self.ids[i]),
            frames=g["frames/features"][i, : n["frames"]],
            flow=g["flow/features"][i, : n["flow"]],
            audio=g["audio/features"][i, : n["audio"]],
            label=int(self.labels[i]),
            targets=self.targets[i],
        )
