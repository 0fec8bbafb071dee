"""Every spelling of one store has one identity; the cache tools refuse to write into a source."""

from __future__ import annotations

import os

import numpy as np
import pytest

from aver.cache import FeatureCache
from aver.identity import SameStoreError, refuse_overlap, same_store, store_identity
from aver.testing import build_feature_cache


def test_every_local_spelling_of_a_store_is_the_same_store(tmp_path, monkeypatch):
    real = tmp_path / "a.zarr"
    real.mkdir()
    (tmp_path / "link.zarr").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    spellings = [
        str(real),
        str(real) + "/",
        "a.zarr",
        "./a.zarr/",
        str(tmp_path / "sub" / ".." / "a.zarr"),
        str(tmp_path / "link.zarr"),
        "link.zarr/",
        f"file://{real}",
        f"file://{tmp_path}/link.zarr/",
    ]
    assert {store_identity(s) for s in spellings} == {f"file://{os.path.realpath(real)}"}
    assert not same_store(str(real), str(tmp_path / "b.zarr"))
    assert not same_store(str(real), str(tmp_path / "a.zarr2"))  # a prefix is not a parent


def test_url_spellings_of_a_store_are_the_same_store():
    assert same_store("s3://b/x.zarr", "s3://b/x.zarr/")
    assert same_store("s3://b/x.zarr", "s3a://b/x.zarr")
    assert same_store("memory://l/t.zarr", "memory:///l/t.zarr/")
    assert same_store("simplecache::s3://b/x.zarr", "s3://b/x.zarr")
    assert not same_store("s3://b/x.zarr", "s3://c/x.zarr")
    assert not same_store("s3://b/x.zarr", "memory://b/x.zarr")
    assert not same_store("s3://b/x.zarr", "/b/x.zarr")


@pytest.mark.parametrize(
    ("dest", "why"),
    [
        ("{a}", "is the source"),
        ("{a}/", "is the source .* \\(both are file://"),
        ("{t}/link.zarr", "is the source .* \\(both are file://"),
        ("file://{a}", "is the source"),
        ("{a}/inner.zarr", "lies inside the source"),
        ("{t}/link.zarr/inner.zarr", "lies inside the source"),
        ("{t}", "holds the source"),
    ],
)
def test_refuse_overlap_names_the_source(tmp_path, dest, why):
    a = str(tmp_path / "a.zarr")
    os.mkdir(a)
    (tmp_path / "link.zarr").symlink_to(a)
    with pytest.raises(SameStoreError, match=f"aver cache merge: the destination .* {why}") as e:
        refuse_overlap("merge", [str(tmp_path / "b.zarr"), a], dest.format(a=a, t=tmp_path))
    assert e.value.exit_code == 2 and "choose a destination outside every source" in str(e.value)
    refuse_overlap("merge", [a], str(tmp_path / "a2.zarr"))  # a sibling is fine


def _frames(url: str) -> int:
    cache = FeatureCache(url)
    return int(cache.lengths["frames"].sum())


def test_cli_merge_into_one_of_its_sources_is_refused_and_touches_nothing(tmp_path, capsys):
    from aver.cli import main

    a = build_feature_cache(str(tmp_path / "A.zarr"), n_clips=10)
    b = build_feature_cache(str(tmp_path / "B.zarr"), n_clips=10)
    frames = _frames(a)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "A.zarr")
    for dest in (a, str(tmp_path / "link.zarr"), f"file://{a}", a + "/", str(tmp_path / "A.zarr" / "m.zarr")):
        assert main(["cache", "merge", a, b, dest, "--overwrite", "-q"]) == 2
        assert "aver cache merge: the destination" in capsys.readouterr().err
    assert _frames(a) == frames and FeatureCache(a).verify()[:2] == ([], 10)


def test_pack_and_pull_into_their_source_are_refused(tmp_path):
    from aver.pack import pack
    from aver.pull import pull

    a = build_feature_cache(str(tmp_path / "A.zarr"), n_clips=10)
    frames = _frames(a)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "A.zarr")
    for dest in (a, str(tmp_path / "link.zarr"), f"file://{a}/", str(tmp_path)):
        with pytest.raises(SameStoreError, match="aver cache pack: the destination"):
            pack(a, dest, overwrite=True, progress=False)
        with pytest.raises(SameStoreError, match="aver cache pull: the destination"):
            pull(a, dest, progress=False)
    with pytest.raises(SameStoreError, match="lies inside the source"):
        pack(a, str(tmp_path / "A.zarr" / "p.zip"), overwrite=True, progress=False)
    assert _frames(a) == frames and FeatureCache(a).verify()[:2] == ([], 10)


@pytest.mark.slow
def test_pack_and_merge_into_their_s3_source_are_refused(tmp_path, s3_endpoint):
    import fsspec

    from aver.merge import merge
    from aver.pack import pack

    src = build_feature_cache(str(tmp_path / "A.zarr"), n_clips=6)
    fsspec.filesystem("s3", **s3_endpoint).put(src, "aver-caches/a.zarr", recursive=True)
    url, so = "s3://aver-caches/a.zarr", s3_endpoint
    before = FeatureCache(url, so).read_features(np.arange(6))
    with pytest.raises(SameStoreError, match="is the source s3://aver-caches/a.zarr \\(both are s3://"):
        pack(url, url + "/", storage_options=so, dest_options=so, overwrite=True, progress=False)
    with pytest.raises(SameStoreError, match="lies inside the source"):
        pack(url, url + "/packed.zarr", storage_options=so, dest_options=so, progress=False)
    with pytest.raises(SameStoreError, match="aver cache merge: the destination s3a://"):
        merge([src, url], "s3a://aver-caches/a.zarr", storage_options=so, overwrite=True, progress=False)
    after = FeatureCache(url, so)
    assert after.verify()[:2] == ([], 6)
    now = after.read_features(np.arange(6))
    assert all(np.array_equal(x, y) for k in before for x, y in zip(before[k], now[k], strict=True))
