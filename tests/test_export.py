"""``aver cache export``: the HDF5 file read back with h5py equals what ``FeatureCache`` reads."""

from __future__ import annotations

import numpy as np
import pytest

from aver import layout as L
from aver.cache import FeatureCache
from aver.cli import main
from aver.export import export
from aver.store import CacheWriter
from aver.testing import build_feature_cache

h5py = pytest.importorskip("h5py")

FAILED, PENDING = (4, 9), (13,)


def _cache(url: str, **kw) -> str:
    """A toy cache with clips 4 and 9 failed and clip 13 pending (never committed)."""
    build_feature_cache(url, n_clips=23, **kw)
    w = CacheWriter(url)
    for i in FAILED:
        w.write_failure(i, "decode error")
    g = L.open_root(url, "r+")
    for i in PENDING:  # as a clip the extraction has not reached: no record, no status
        g[L.DIGEST][i] = ""
        g[L.STATUS][i] = L.PENDING
    return url


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return _cache(str(tmp_path_factory.mktemp("export") / "toy.zarr"), soft_labels=True)


def _check_clips(path, cache: FeatureCache, idx: np.ndarray, modalities=("frames", "flow", "audio")) -> None:
    """Every clip of the file, row r = store clip idx[r], against the cache's own reader."""
    with h5py.File(path, "r") as f:
        assert [x.decode() for x in f["clip_id"][:]] == [str(cache.ids[i]) for i in idx]
        assert [x.decode() for x in f["speaker"][:]] == [str(cache.speakers[i]) for i in idx]
        np.testing.assert_array_equal(f["label"][:], cache.labels[idx])
        assert [x.decode() for x in f["label_names"][:]] == cache.classes
        np.testing.assert_array_equal(f["folds"][:], cache.stored_folds[:, idx])
        assert f["folds"].attrs["flag_meanings"] == "train validation test unused"
        for r, i in enumerate(idx):
            want = cache.read_features(np.array([i]))
            for key in modalities:
                n = int(f[L.LENGTHS[key].split("/")[1]][r])
                rows = f[key][r]
                assert n == len(want[key][0]) == cache.lengths[key][i]
                assert rows.dtype == np.float32
                np.testing.assert_array_equal(rows[:n], want[key][0].astype(np.float32))
                assert not rows[n:].any(), (key, r)  # zero padding
        assert not set(f) & ({"frames", "flow", "audio"} - set(modalities))


@pytest.mark.parametrize("batch_bytes", [1, 13_000, 1 << 27])
def test_every_committed_clip_read_back_equals_the_cache(store, tmp_path, batch_bytes):
    """Batches of 1, 3 and all clips write the same file: each clip equals ``read_features``."""
    out = tmp_path / "all.h5"
    s = export(store, str(out), batch_bytes=batch_bytes)
    cache = FeatureCache(store)
    done = np.flatnonzero(cache.status == L.DONE)
    assert s["clips"] == len(done) == 20 and s["left_out"] == {"pending": 1, "failed": 2}
    _check_clips(out, cache, done)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["soft_label"][:], cache.soft_labels[done])
        for key in ("frames", "flow", "audio"):
            d = f[key]
            assert d.compression == "gzip" and d.shuffle and d.chunks[0] >= 1
            assert d.shape[1] == cache.lengths[key][done].max()  # padded to the longest, not capacity
            assert d.attrs["long_name"] and d.attrs["units"] == "1"
        assert f["audio"].attrs["dimensions"] == "clip audio_frame layer feature"
        assert list(f["audio"].attrs["layers"]) == [0]
        assert f.attrs["config_hash"] == "testcache" and f.attrs["dataset"] == "toy"
        assert f.attrs["aver_version"] and f.attrs["models"] == "{}" and "fold" not in f.attrs
        assert f["label"].attrs["flag_meanings"] == "none class0 class1 class2"


def test_a_fold_split_and_modalities_through_the_cli(store, tmp_path, capsys):
    out = tmp_path / "fold2.h5"
    args = [
        "cache",
        "export",
        store,
        str(out),
        "--fold",
        "2",
        "--split",
        "train,val",
        "--modality",
        "audio,frames",
    ]
    assert main([*args, "-q"]) == 0
    cache = FeatureCache(store)
    wanted = np.isin(cache.stored_folds[1], [L.TRAIN, L.VALIDATION])
    idx = np.flatnonzero(wanted & (cache.status == L.DONE))
    _check_clips(out, cache, idx, modalities=("frames", "audio"))
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["split"][:], cache.stored_folds[1, idx])
        assert set(f["split"][:].tolist()) == {L.TRAIN, L.VALIDATION}
        assert f.attrs["fold"] == 2 and f.attrs["splits"] == "train,validation"
        assert f.attrs["modalities"] == "frames,audio"
    assert wanted[list(FAILED + PENDING)].all()  # speakers s4, s4, s3: training speakers of fold 2
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: {len(idx)} clips (fold 2: train, validation), frames, audio")
    assert line.endswith(
        "; 3 left out, not committed: 1 pending (not extracted yet), 2 failed "
        f"(aver info {store} names the causes)"
    )


def test_a_packed_copy_exports_the_same_features(store, tmp_path):
    from aver.pack import pack

    packed = pack(store, str(tmp_path / "packed.zarr"), progress=False) and str(tmp_path / "packed.zarr")
    export(store, str(tmp_path / "a.h5"), fold=1)
    export(packed, str(tmp_path / "b.h5"), fold=1)
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)


def test_targets_are_exported_with_their_names(tmp_path):
    url = build_feature_cache(str(tmp_path / "t.zarr"), n_clips=12, targets=("valence", "arousal"))
    export(url, str(tmp_path / "t.h5"))
    cache = FeatureCache(url)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        np.testing.assert_array_equal(f["targets"][:], cache.targets)
        assert [x.decode() for x in f["target_names"][:]] == ["valence", "arousal"]
        assert "flag_values" not in f["label"].attrs and len(f["label_names"]) == 0


def _error(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("aver: error: ")
    return code, err


def test_bad_input_is_one_line(store, tmp_path, capsys):
    out = tmp_path / "x.h5"
    out.write_bytes(b"mine")
    code, err = _error(capsys, ["cache", "export", store, str(out)])
    assert code == 2 and "exists" in err and "--force" in err and out.read_bytes() == b"mine"
    cases = [
        (["--modality", "frames,video"], 2, "--modality video: unknown"),
        (["--fold", "7"], 4, "fold 7 does not exist"),
        (["--fold", "1", "--split", "dev"], 2, "--split dev: unknown"),
        (["--split", "test"], 2, "give --fold K too"),
    ]
    for flags, want, text in cases:
        code, err = _error(capsys, ["cache", "export", store, str(tmp_path / "y.h5"), *flags])
        assert code == want and text in err, (flags, err)
    code, err = _error(capsys, ["cache", "export", store, str(tmp_path / "no" / "y.h5")])
    assert code == 2 and "does not exist" in err and "no" in err
    code, err = _error(capsys, ["cache", "export", store, str(tmp_path)])
    assert code == 2 and "is a folder" in err
    code, err = _error(capsys, ["cache", "export", str(tmp_path / "none.zarr"), str(tmp_path / "y.h5")])
    assert code == 4 and "no cache" in err
    assert not (tmp_path / "y.h5").exists()
    assert main(["cache", "export", store, str(out), "--force", "-q"]) == 0
    assert h5py.is_hdf5(out)


def test_no_committed_clip_is_refused(tmp_path, capsys):
    url = build_feature_cache(str(tmp_path / "f.zarr"), n_clips=6)
    for i in range(6):
        CacheWriter(url).write_failure(i, "decode error")
    code, err = _error(capsys, ["cache", "export", url, str(tmp_path / "f.h5")])
    assert code == 4 and "no committed clips" in err and "6 failed" in err


def test_damaged_clip_is_refused_and_nothing_written(tmp_path, capsys):
    url = build_feature_cache(str(tmp_path / "d.zarr"), n_clips=8)
    g = L.open_root(url, "r+")
    g[L.FRAME_FEATURES][5, 0] = g[L.FRAME_FEATURES][5, 0] + 1  # one changed value: differs from its digest
    code, err = _error(capsys, ["cache", "export", url, str(tmp_path / "d.h5"), "-q"])
    assert code == 4 and "c005" in err and "digest" in err
    assert list(tmp_path.glob("*.h5")) == [] and list(tmp_path.glob(".*tmp*")) == []


def test_interrupted_export_leaves_no_file(store, tmp_path, monkeypatch):
    calls = []

    def failing(self, indices, verify=True):
        calls.append(len(indices))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, indices, verify)

    original = FeatureCache.read_features
    monkeypatch.setattr(FeatureCache, "read_features", failing)
    with pytest.raises(KeyboardInterrupt):
        export(store, str(tmp_path / "i.h5"), batch_bytes=1)
    assert calls == [1, 1] and list(tmp_path.iterdir()) == []
