"""A cache's clips as a ``torch.utils.data.Dataset``, for notebooks and your own training loops.

``aver.open_cache(url).dataset(fold=1, split="train")`` gives one dict of tensors per committed
clip of that fold's split, read through the one reader (``FeatureCache.read_features``, digests
checked); ``CacheDataset.collate`` pads them into batches with lengths and masks::

    ds = aver.open_cache("caches/ravdess.zarr").dataset(fold=1, split="train")
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=ds.collate, num_workers=2)

The features are those the cache stores, at their valid lengths: ``frames`` ``[T, D_image]``,
``flow`` ``[P, D_image]``, ``audio`` ``[A, L, D_audio]`` (every stored layer, at the audio
encoder's frame rate), float16 as stored. They are not yet what aver's own models read: the
trainer (``aver.train.data.load_clips``) pools the audio into fragments, pairs frames with flow
maps and standardises with training statistics. A store with end-to-end inputs (``aver extract
--inputs crops,wave``) also offers ``crops`` (uint8 ``[K, S, S, 3]``, with ``crop_index``, the
frame each crop was taken from) and ``wave`` (float32 ``[W]``, the 16 kHz waveform in [-1, 1]).

Pickling and worker processes: the dataset keeps the store's URL and storage options, not an
open store; each process opens its own reader on first use (a ``DataLoader`` worker, forked or
spawned, reopens rather than sharing a handle). A ``memory://`` store exists only in the process
that made it, so spawned workers cannot read one.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from aver import layout as L
from aver.cache import FeatureCache
from aver.errors import CacheError, ConfigError

FEATURE_MODALITIES = tuple(L.FEATURES)  # frames, flow, audio
INPUT_MODALITIES = ("crops", "wave")  # the end-to-end inputs (layout 2)
MODALITIES = (*FEATURE_MODALITIES, *INPUT_MODALITIES)
# sequence keys of an item: padded by ``collate`` along their first axis
SEQUENCES = (*FEATURE_MODALITIES, "crops", "crop_index", "wave")


def check_modalities(modalities: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """``modalities`` as a tuple without repeats (one name may be given as a string); an unknown
    or empty choice is a ``ConfigError`` naming the choices."""
    chosen = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    unknown = [m for m in chosen if m not in MODALITIES]
    if unknown or not chosen:
        what = f"modality {unknown[0]!r} is unknown" if unknown else "no modality chosen"
        raise ConfigError(f"{what}: choose from {', '.join(MODALITIES)}")
    return tuple(dict.fromkeys(chosen))


class CacheDataset(torch.utils.data.Dataset):
    """The committed clips of ``split`` (``train`` / ``validation`` / ``test``) in ``fold`` (1-based)
    of a cache, one item per clip in store order.

    An item is a dict: each chosen modality's tensor at its valid length (module docstring), plus
    ``label`` (int64, -1 when the corpus has no classes), ``targets`` (float32 ``[K_t]``, empty
    without continuous targets), ``soft_label`` (float32 ``[C]``, only when the store has consensus
    labels), ``index`` (the clip's row in the cache, as in ``FeatureCache.table``) and ``clip_id``
    (a string). ``verify`` checks every clip read against its recorded digests, as training does.
    """

    def __init__(
        self,
        cache: FeatureCache,
        fold: int = 1,
        split: str = "train",
        modalities: tuple[str, ...] | list[str] | str = FEATURE_MODALITIES,
        verify: bool = True,
    ) -> None:
        self.modalities = check_modalities(modalities)
        if type(fold) is not int:
            raise ConfigError(f"fold must be an integer 1..{cache.n_folds}, not {fold!r}")
        if cache.n_folds == 0:
            raise CacheError(
                f"{cache.url} holds no folds (no {L.FOLD_SPLIT}): read its clips with "
                "cache.read_features(indices), the indices being rows of cache.table"
            )
        self.indices = cache.split_indices(fold, split)  # checks the fold and the split
        cache.require_intact(self.indices)
        # a partial pulled copy without a chosen modality: said now, not at the first item
        cache._refuse_unreadable(
            [m for m in self.modalities if m in FEATURE_MODALITIES], self.indices[:0], None
        )
        if any(m in INPUT_MODALITIES for m in self.modalities):
            _require_inputs(cache, self.indices)
        self.url, self.storage_options = cache.url, cache.storage_options
        self.fold, self.split, self.verify = fold, split, verify
        self.classes = cache.classes
        self._cache: FeatureCache | None = cache
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (
            f"CacheDataset({self.url!r}, fold={self.fold}, split={self.split!r}: {len(self)} clips; "
            f"{', '.join(self.modalities)})"
        )

    @property
    def cache(self) -> FeatureCache:
        """This process's reader: the one the dataset was made with, or one opened here on first use
        in another process (a ``DataLoader`` worker)."""
        if self._cache is None or self._pid != os.getpid():
            self._cache, self._pid = FeatureCache(self.url, self.storage_options), os.getpid()
        return self._cache

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the open reader: a worker process opens its own."""
        return {**self.__dict__, "_cache": None}

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not -len(self) <= k < len(self):
            raise IndexError(f"clip {k} of a dataset of {len(self)} clips")
        cache, i = self.cache, int(self.indices[k])
        item: dict[str, Any] = {}
        feats = [m for m in self.modalities if m in FEATURE_MODALITIES]
        if feats:
            rows = cache.read_features(np.array([i]), verify=self.verify, modalities=tuple(feats))
            item.update({m: torch.from_numpy(rows[m][0]) for m in feats})
        if any(m in INPUT_MODALITIES for m in self.modalities):
            inputs = cache.read_inputs(np.array([i]), verify=self.verify)
            if "crops" in self.modalities:
                item["crops"] = torch.from_numpy(inputs["crops"][0])
                item["crop_index"] = torch.from_numpy(inputs["crop_index"][0])
            if "wave" in self.modalities:
                item["wave"] = torch.from_numpy(inputs["wave"][0].astype(np.float32) / L.WAVE_SCALE)
        item["label"] = torch.tensor(int(cache.labels[i]), dtype=torch.long)
        item["targets"] = torch.from_numpy(cache.targets[i].astype(np.float32))
        if cache.soft_labels is not None:
            item["soft_label"] = torch.from_numpy(cache.soft_labels[i].astype(np.float32))
        item["index"] = torch.tensor(i, dtype=torch.long)
        item["clip_id"] = str(cache.ids[i])
        return item

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        """Items -> one batch. Each sequence ``key`` (``frames``, ``flow``, ``audio``, ``crops``,
        ``crop_index``, ``wave``) is zero-padded along its first axis to ``[B, longest, ...]``
        (at least one row), with ``<key>_lengths`` (int64 ``[B]``) and ``<key>_mask`` (bool
        ``[B, longest]``, True on valid rows); features become float32, crops stay uint8. The other
        tensors are stacked (``label`` ``[B]``, ``targets``, ``soft_label``, ``index``); ``clip_id``
        is a list. A static method: ``collate_fn=ds.collate`` pickles for worker processes."""
        if not items:
            raise ValueError("collate needs at least one item")
        batch: dict[str, Any] = {}
        for key, first in items[0].items():
            values = [item[key] for item in items]
            if key in SEQUENCES:
                padded, lengths = _pad(values)
                batch[key] = padded.float() if key in FEATURE_MODALITIES else padded
                batch[f"{key}_lengths"] = lengths
                batch[f"{key}_mask"] = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
            elif isinstance(first, torch.Tensor):
                batch[key] = torch.stack(values)
            else:
                batch[key] = values
        return batch


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``[n_i, ...]`` -> zero-padded ``[B, max(max n_i, 1), ...]`` and their lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = seqs[0].new_zeros((len(seqs), max(int(lengths.max()), 1), *seqs[0].shape[1:]))
    for k, s in enumerate(seqs):
        out[k, : len(s)] = s
    return out, lengths


def _require_inputs(cache: FeatureCache, indices: np.ndarray) -> None:
    """The end-to-end inputs of every clip of ``indices`` committed (``FeatureCache.read_inputs``
    says the same when it reads; here it is said before the first item)."""
    if not cache.inputs:
        raise CacheError(
            f"{cache.url} holds no end-to-end inputs (crops, wave): extract with --inputs crops,wave "
            "(added to the existing store without recomputing features), or choose from "
            f"{', '.join(FEATURE_MODALITIES)}"
        )
    missing = [str(cache.ids[i]) for i in indices if cache.input_status()[i] != L.DONE]
    if missing:
        raise CacheError(
            f"{cache.url}: {len(missing)} clips have no end-to-end inputs yet (e.g. {missing[:3]}): rerun "
            "`aver extract` with the same inputs settings to fill them"
        )
