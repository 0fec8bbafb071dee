"""aver: audio-visual emotion recognition in two stages that meet only through a feature cache.

- ``aver.extract`` (stage one, the ``[extract]`` extra): raw clips -> a Zarr feature cache.
- ``aver.train`` (stage two, base install): a cache -> models, metrics and reports.
- The kernel both stages import: ``aver.layout`` (the cache contract), ``aver.store`` (the one
  writer), ``aver.cache`` (the one reader), ``aver.errors``, ``aver.registry``, ``aver.overrides``,
  ``aver.utils``.

The library API is imported lazily so that ``import aver`` (and ``aver --help``) stays instant
(``docs/api.md`` walks through it in a notebook)::

    aver.extract_dataset("ravdess", data="/data/RAVDESS", cache="caches", preset="paper")
    cache = aver.open_cache("caches/ravdess.zarr")       # the reader; cache.table: a DataFrame
    ds = cache.dataset(fold=1, split="train")             # a torch Dataset; ds.collate pads batches
    aver.train_fold("caches/ravdess.zarr", fold=3, preset="paper")
    aver.cross_validate("caches/ravdess.zarr", preset="paper")
    aver.sweep("caches/cremad.zarr", table="de3:2", seeds=[0, 1, 2], workers=2)  # + statistics
    aver.predict("runs/ravdess/de3/fold3", ["new_video.mp4"])   # a table: one dict per file
"""

from __future__ import annotations

from typing import Any

__version__ = "0.5.0"

_API = {
    "open_cache": "aver.cache",
    "FeatureCache": "aver.cache",
    "CacheDataset": "aver.dataset",
    "extract_dataset": "aver.extract.api",
    "train_fold": "aver.train.api",
    "cross_validate": "aver.train.api",
    "evaluate_run": "aver.train.api",
    "sweep": "aver.train.sweeper",
    "predict": "aver.apps.prediction",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'aver' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
