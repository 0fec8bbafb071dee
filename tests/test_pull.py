"""aver cache pull: a fold's clips (and chosen modalities) from a shared store, resumable, verified."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from aver.cache import FeatureCache
from aver.errors import CacheError
from aver.pull import pull
from aver.testing import build_feature_cache


def test_pull_one_split_of_one_fold(tmp_path):
    src = build_feature_cache(str(tmp_path / "shared.zarr"), n_clips=30)
    dest = str(tmp_path / "mine.zarr")
    s = pull(src, dest, fold=2, splits=["test"], progress=False)
    shared, mine = FeatureCache(src), FeatureCache(dest)
    want = shared.split_indices(2, "test")
    assert s["pulled"] == len(want) > 0 and np.flatnonzero(mine.status == 1).tolist() == want.tolist()
    a, b = shared.read_features(want), mine.read_features(want)
    assert all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))
    assert pull(src, dest, fold=2, splits=["test"], progress=False)["pulled"] == 0  # resumable: nothing left
    assert mine.meta["pulled"]["fold"] == 2


def test_pull_modalities_then_the_rest(tmp_path):
    src = build_feature_cache(str(tmp_path / "shared.zarr"), n_clips=20)
    dest = str(tmp_path / "mine.zarr")
    pull(src, dest, modalities=["frames"], progress=False)
    with pytest.raises(CacheError, match=r"pulled without \['flow', 'audio'\]"):
        FeatureCache(dest).read_features(np.arange(3))
    pull(src, dest, modalities=["flow", "audio"], progress=False)
    mine = FeatureCache(dest)
    assert mine.verify()[:2] == ([], 20)
    a, b = FeatureCache(src).read_features(np.arange(20)), mine.read_features(np.arange(20))
    assert all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))


@pytest.mark.slow
def test_pull_a_fold_from_s3_reads_only_its_clips(tmp_path, s3_endpoint):
    import fsspec

    src = build_feature_cache(str(tmp_path / "shared.zarr"), n_clips=30)
    fsspec.filesystem("s3", **s3_endpoint).put(src, "aver-caches/shared.zarr", recursive=True)
    keys = []

    class Keys(logging.Handler):
        def emit(self, record):
            keys.append(record.getMessage())

    handler = Keys(logging.DEBUG)
    log = logging.getLogger("s3fs")
    old = log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        pull(
            "s3://aver-caches/shared.zarr",
            str(tmp_path / "mine.zarr"),
            fold=1,
            splits=["validation"],
            storage_options=s3_endpoint,
            progress=False,
        )
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    want = set(FeatureCache(src).split_indices(1, "validation").tolist())
    fetched = {
        int(m.split("features/c/")[1].split("/")[0]) for m in keys if "features/c/" in m and "get_object" in m
    }
    assert fetched and fetched <= want
