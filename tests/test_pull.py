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


def test_pull_carries_the_end_to_end_inputs(tmp_path):
    from aver.testing import add_toy_inputs

    src = add_toy_inputs(build_feature_cache(str(tmp_path / "shared.zarr"), n_clips=20))
    dest = str(tmp_path / "mine.zarr")
    pull(src, dest, fold=1, splits=["train"], progress=False)
    idx = FeatureCache(src).split_indices(1, "train")
    a, b = FeatureCache(src).read_inputs(idx), FeatureCache(dest).read_inputs(idx)
    assert all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))
    plain = str(tmp_path / "features.zarr")
    pull(src, plain, modalities=["frames", "flow", "audio"], progress=False)
    with pytest.raises(CacheError, match="no end-to-end inputs"):
        FeatureCache(plain).read_inputs(idx)


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


@pytest.mark.slow
def test_training_from_a_url_reads_through_a_local_copy(tmp_path, s3_endpoint):
    """aver train on an s3:// cache pulls the fold once into the read-through folder; a second fold
    of the same cache fetches no feature chunk again, and the metrics equal training on the source."""
    import fsspec

    from aver.train import train_fold

    src = build_feature_cache(str(tmp_path / "shared.zarr"), n_clips=30)
    fsspec.filesystem("s3", **s3_endpoint).put(src, "aver-caches/shared.zarr", recursive=True)
    url = "s3://aver-caches/shared.zarr"
    model = {"model.d_model": 16, "model.d_hidden": 24, "model.n_heads": 2, "model.head_hidden": 16}
    kw = {"preset": "tiny", "epochs": 1, "overrides": model, "storage_options": s3_endpoint}
    kw["read_through"] = str(tmp_path / "rt")
    remote = train_fold(url, 1, out=str(tmp_path / "r1"), **kw)
    local = train_fold(src, 1, preset="tiny", epochs=1, overrides=model, out=str(tmp_path / "l1"))
    assert remote["test"] == local["test"]
    keys = []

    class Keys(logging.Handler):
        def emit(self, record):
            keys.append(record.getMessage())

    log = logging.getLogger("s3fs")
    handler, old = Keys(logging.DEBUG), log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        train_fold(url, 2, out=str(tmp_path / "r2"), **kw)
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    assert not [m for m in keys if "features/c/" in m and "get_object" in m]
