"""aver cache pack: a sharded, consolidated, verified copy that trains exactly like its source."""

from __future__ import annotations

import pytest

from aver.cache import FeatureCache
from aver.errors import CacheError, UserError
from aver.pack import pack
from aver.testing import build_feature_cache

TINY = {"model.d_model": 16, "model.d_hidden": 24, "model.n_heads": 2, "model.head_hidden": 16}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack")
    src = build_feature_cache(str(d / "toy.zarr"), n_clips=40)
    summary = pack(src, str(d / "packed.zarr"), shard_clips=16, progress=False)
    return src, str(d / "packed.zarr"), summary


def test_pack_shards_consolidates_and_verifies(stores):
    src, packed, summary = stores
    assert summary["verified"] == 40 and summary["objects"][1] * 5 < summary["objects"][0]
    cache = FeatureCache(packed)
    assert cache.meta["packed"] == {"shard_clips": 16, "source": src}
    assert cache.group["frames/features"].shards[0] == 16 and cache.group["frames/features"].chunks[0] == 1
    assert cache.group["clips/n_frames"].chunks == (40,)  # scalars gathered into one chunk
    assert cache.group["folds/split"].attrs["flag_meanings"] == "train validation test unused"
    assert cache.verify()[0] == []


def test_a_packed_copy_trains_exactly_like_its_source(stores, tmp_path):
    from aver.train import train_fold

    src, packed, _ = stores
    a = train_fold(src, 1, preset="tiny", out=str(tmp_path / "a"), epochs=2, overrides=TINY)
    b = train_fold(packed, 1, preset="tiny", out=str(tmp_path / "b"), epochs=2, overrides=TINY)
    assert a["test"] == b["test"] and a["validation"] == b["validation"]


def test_a_packed_copy_is_read_only_and_damage_is_not_packed(stores, tmp_path):
    from aver.store import CacheWriter, Capacity

    src, packed, _ = stores
    with pytest.raises(CacheError, match="read-only"):
        CacheWriter.create_or_open(packed, None, {"config_hash": "x"}, Capacity(1, 1), {})
    with pytest.raises(UserError, match="--overwrite"):
        pack(src, packed, progress=False)
    build_feature_cache(str(tmp_path / "d.zarr"), n_clips=8)
    chunk = tmp_path / "d.zarr" / "audio" / "features" / "c" / "5" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="does not verify"):
        pack(str(tmp_path / "d.zarr"), str(tmp_path / "d_packed.zarr"), progress=False)
    with pytest.raises(CacheError, match="incomplete"):  # no reader takes the failed copy
        FeatureCache(str(tmp_path / "d_packed.zarr"))


def test_cli_pack(tmp_path, capsys):
    from aver.cli import main

    src = build_feature_cache(str(tmp_path / "toy.zarr"), n_clips=20)
    assert main(["cache", "pack", src, str(tmp_path / "p.zarr"), "-q"]) == 0
    assert "20 clips packed and verified" in capsys.readouterr().out
    assert main(["cache", "verify", str(tmp_path / "p.zarr"), "-q"]) == 0
    assert main(["info", str(tmp_path / "p.zarr")]) == 0


def test_pack_into_one_zip_file(stores, tmp_path):
    import numpy as np
    import xarray as xr
    import zarr

    src, _, _ = stores
    dest = str(tmp_path / "toy.zip")
    summary = pack(src, dest, progress=False)
    assert summary["objects"][1] == 1 and not list(tmp_path.glob("*.packing.zarr"))
    cache = FeatureCache(dest)
    assert cache.verify()[:2] == ([], 40)
    a, b = FeatureCache(src).read_features(np.arange(40)), cache.read_features(np.arange(40))
    assert all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))
    tree = xr.open_datatree(zarr.storage.ZipStore(dest, mode="r"), engine="zarr")
    assert tree["clip"].size == 40
    from aver.store import CacheWriter, Capacity

    with pytest.raises(CacheError, match="read-only"):
        CacheWriter.create_or_open(dest, None, {"config_hash": "x"}, Capacity(1, 1), {})


@pytest.mark.slow
def test_pack_into_s3_and_train_from_it(stores, tmp_path, s3_endpoint):
    """A packed copy written straight to a bucket: verified there, trained on through the
    read-through copy, with the source's metrics."""
    from aver.train import train_fold

    src, _, _ = stores
    url = "s3://aver-caches/team/packed.zarr"
    summary = pack(src, url, storage_options=s3_endpoint, dest_options=s3_endpoint, progress=False)
    assert summary["verified"] == 40 and summary["objects"][1] < 100
    assert FeatureCache(url, s3_endpoint).meta["packed"]["shard_clips"] == 64
    kw = {"preset": "tiny", "epochs": 1, "overrides": TINY}
    remote = train_fold(
        url, 1, out=str(tmp_path / "r"), storage_options=s3_endpoint, read_through=str(tmp_path / "rt"), **kw
    )
    local = train_fold(src, 1, out=str(tmp_path / "l"), **kw)
    assert remote["test"] == local["test"]


def _kill_after_the_first_array(monkeypatch):
    """Simulate a pack killed half way: the second array copied raises."""
    import aver.pack

    copied = []
    real = aver.pack._copy

    def copy(*args, **kw):
        if copied:
            raise KeyboardInterrupt
        copied.append(1)
        real(*args, **kw)

    monkeypatch.setattr(aver.pack, "_copy", copy)


def test_a_killed_pack_names_the_pack_rerun(stores, tmp_path, monkeypatch):
    from aver.layout import open_root

    src, _, _ = stores
    dest = str(tmp_path / "p.zarr")
    _kill_after_the_first_array(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        pack(src, dest, shard_clips=8, progress=False)
    marker = open_root(dest, "r").attrs["aver"]
    assert marker["template"] == "incomplete"
    assert marker["remedy"] == (
        f"a pack into it was interrupted; rerun `aver cache pack {src} {dest} --shard-clips 8 --overwrite`"
    )
    with pytest.raises(UserError, match="--overwrite"):  # the rerun without it is refused
        pack(src, dest, progress=False)
    monkeypatch.undo()
    assert pack(src, dest, shard_clips=8, overwrite=True, progress=False)["verified"] == 40


def test_reading_a_killed_pack_names_the_pack_rerun(stores, tmp_path, monkeypatch):
    src, _, _ = stores
    dest = str(tmp_path / "p.zarr")
    _kill_after_the_first_array(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        pack(src, dest, progress=False)
    with pytest.raises(CacheError, match="is incomplete: a pack into it was interrupted") as e:
        FeatureCache(dest)
    assert f"rerun `aver cache pack {src} {dest} --overwrite`" in str(e.value)
    assert "aver extract" not in str(e.value)


def test_a_killed_zip_pack_leaves_no_temporary_folder(stores, tmp_path, monkeypatch):
    src, _, _ = stores
    dest = tmp_path / "toy.zip"
    _kill_after_the_first_array(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        pack(src, str(dest), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "toy.zip.packing.zarr").mkdir()  # what a SIGKILL leaves: the rerun clears it
    (tmp_path / "toy.zip.packing.zarr" / "zarr.json").write_text("{}")
    assert pack(src, str(dest), progress=False)["verified"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.zip"]
