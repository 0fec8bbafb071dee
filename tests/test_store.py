"""Store writer: template, commit protocol, failures, config mismatch, fsspec URLs."""

from __future__ import annotations

import numpy as np
import pytest

from aver.errors import CacheError, CacheMismatchError
from aver.extract.datasets.base import ClipRecord, DatasetIndex
from aver.folds import round_robin_groups, speaker_folds
from aver.layout import DONE, FAILED, PENDING, open_root
from aver.store import CacheWriter, Capacity, ClipResult

DIMS = {"image": 8, "audio": 4, "audio_layers": 2, "audio_rate_hz": 50.0}


def _index(n=6):
    clips = [
        ClipRecord(clip_id=f"c{i}", video=f"/data/c{i}.mp4", speaker=f"s{i % 3}", label=i % 2)
        for i in range(n)
    ]
    speakers = [c.speaker for c in clips]
    return DatasetIndex(
        "toy",
        "/data",
        clips,
        classes=["a", "b"],
        folds=speaker_folds(speakers, round_robin_groups(speakers, 5)),
        folds_source="speaker-round-robin",
    )


def _attrs(h="h1"):
    return {"config_hash": h, "config": {"x": h}, "preset": "tiny", "dataset": "toy"}


def _result(t=5, seed=0):
    rng = np.random.default_rng(seed)
    return ClipResult(
        frame_features=rng.standard_normal((t, 8)).astype(np.float16),
        flow_features=rng.standard_normal((t - 1, 8)).astype(np.float16),
        audio_features=rng.standard_normal((t * 2, 2, 4)).astype(np.float16),
        timestamps=np.arange(t, dtype=np.float32) / 25,
        face_box=np.ones((t, 4), np.float32),
        face_prob=np.full(t, 0.99, np.float32),
        face_mask=np.ones(t, bool),
        fps=25.0,
    )


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_template_commit_and_failure(tmp_path, scheme):
    url = str(tmp_path / "toy.zarr") if scheme == "file" else f"memory://{tmp_path.name}/toy.zarr"
    index = _index()
    w = CacheWriter.create_or_open(url, index.table(), _attrs(), Capacity(frames=7, audio=16), DIMS)
    assert (w.status() == PENDING).all()
    r = _result()
    w.write_clip(2, r)
    w.write_failure(3, "c3.mp4: [faces] no face")
    g = open_root(url, "r")
    assert g["clips/status"][:].tolist() == [PENDING, PENDING, DONE, FAILED, PENDING, PENDING]
    assert str(g["clips/error"][3]) == "c3.mp4: [faces] no face"
    np.testing.assert_array_equal(g["frames/features"][2, :5], r.frame_features)
    assert not g["frames/features"][2, 5:].any()
    assert g["clips/n_flow"][2] == 4 and g["clips/n_audio"][2] == 10
    assert g["clips/id"][:].tolist() == [f"c{i}" for i in range(6)]
    assert g["clips/video"][0] == "c0.mp4"
    assert g["folds/split"].shape == (3, 6)  # 3 speakers -> 3 folds
    assert g.attrs["aver"]["capacity"] == {"frames": 7, "audio": 16}


def test_rewriting_a_clip_is_idempotent(tmp_path):
    url = str(tmp_path / "toy.zarr")
    w = CacheWriter.create_or_open(url, _index().table(), _attrs(), Capacity(7, 16), DIMS)
    w.write_clip(0, _result(seed=1))
    first = open_root(url, "r")["audio/features"][0]
    w.write_clip(0, _result(seed=1))
    np.testing.assert_array_equal(open_root(url, "r")["audio/features"][0], first)


def test_failure_after_partial_write_resets_data(tmp_path):
    url = str(tmp_path / "toy.zarr")
    w = CacheWriter.create_or_open(url, _index().table(), _attrs(), Capacity(7, 16), DIMS)
    w.write_clip(1, _result())
    w.write_failure(1, "boom")
    g = open_root(url, "r")
    assert not g["frames/features"][1].any() and g["clips/n_frames"][1] == 0


def test_reopen_with_other_config_is_refused(tmp_path):
    url = str(tmp_path / "toy.zarr")
    CacheWriter.create_or_open(url, _index().table(), _attrs("h1"), Capacity(7, 16), DIMS)
    CacheWriter.create_or_open(url, _index().table(), _attrs("h1"), Capacity(7, 16), DIMS)  # same: fine
    with pytest.raises(CacheMismatchError, match="--overwrite"):
        CacheWriter.create_or_open(url, _index().table(), _attrs("h2"), Capacity(7, 16), DIMS)
    with pytest.raises(CacheMismatchError, match="clips"):
        CacheWriter.create_or_open(url, _index(5).table(), _attrs("h1"), Capacity(7, 16), DIMS)
    w = CacheWriter.create_or_open(url, _index().table(), _attrs("h2"), Capacity(7, 16), DIMS, overwrite=True)
    assert w.group.attrs["aver"]["config_hash"] == "h2"


def test_reopen_with_other_labels_or_folds_is_refused(tmp_path):
    """Labels and folds are written once with the template: a rerun that would write others (another
    label source, another fold file) is refused, naming what differs, instead of silently ignored."""
    from aver.cache import FeatureCache

    url = str(tmp_path / "toy.zarr")
    CacheWriter.create_or_open(url, _index().table(), _attrs(), Capacity(7, 16), DIMS)
    relabelled = _index()
    relabelled.clips[0].label = 1
    with pytest.raises(CacheMismatchError, match="clips/label: 1 values differ"):
        CacheWriter.create_or_open(url, relabelled.table(), _attrs(), Capacity(7, 16), DIMS)
    soft = _index()
    soft.soft_labels = np.tile(np.float32([0.25, 0.75]), (6, 1))
    soft.label_source = "consensus argmax:x.csv"
    with pytest.raises(CacheMismatchError, match="label_source.*clips/soft_label: added"):
        CacheWriter.create_or_open(url, soft.table(), _attrs(), Capacity(7, 16), DIMS)
    refolded = _index()
    refolded.folds = refolded.folds[::-1].copy()
    with pytest.raises(CacheMismatchError, match="folds/split"):
        CacheWriter.create_or_open(url, refolded.table(), _attrs(), Capacity(7, 16), DIMS)
    CacheWriter.create_or_open(url, soft.table(), _attrs(), Capacity(7, 16), DIMS, overwrite=True)
    cache = FeatureCache(url)
    assert cache.label_source == "consensus argmax:x.csv"
    assert cache.soft_labels.shape == (6, 2)
    open_root(url, "r+")["clips/soft_label"][2] = [0.5, 0.9]  # not a distribution
    with pytest.raises(CacheError, match="soft_label of clip c2 is not a distribution"):
        FeatureCache(url)


def test_capacity_is_enforced(tmp_path):
    w = CacheWriter.create_or_open(
        str(tmp_path / "t.zarr"), _index().table(), _attrs(), Capacity(3, 16), DIMS
    )
    with pytest.raises(ValueError, match="capacity"):
        w.write_clip(0, _result(t=5))


def test_a_template_interrupted_at_any_step_is_written_again(tmp_path, monkeypatch):
    """Regression: a kill while the template was written left a store without attrs.aver that every
    later run refused (KeyError: 'aver')."""
    import aver.store as store

    url = str(tmp_path / "t.zarr")
    real = store._write_template

    def dies(g, *a):
        real(g, *a)
        raise KeyboardInterrupt  # after the arrays, before the attributes

    monkeypatch.setattr(store, "_write_template", dies)
    with pytest.raises(KeyboardInterrupt):
        CacheWriter.create_or_open(url, _index().table(), _attrs(), Capacity(7, 16), DIMS)
    monkeypatch.setattr(store, "_write_template", real)
    from aver.cache import FeatureCache
    from aver.errors import CacheError

    with pytest.raises(CacheError, match="interrupted while creating it"):
        FeatureCache(url)
    assert CacheWriter.needs_template(url)
    w = CacheWriter.create_or_open(url, _index().table(), _attrs(), Capacity(7, 16), DIMS)
    assert (w.status() == PENDING).all() and FeatureCache(url).n_folds == 3
    # the very first step (an empty group, no attributes yet) is recognised too
    empty = str(tmp_path / "e.zarr")
    open_root(empty, "w")
    assert CacheWriter.needs_template(empty)
    # but a foreign Zarr store with content is never taken over
    other = open_root(str(tmp_path / "o.zarr"), "w")
    other.create_array("x", shape=(2,), dtype="int8")
    assert not CacheWriter.needs_template(str(tmp_path / "o.zarr"))
    with pytest.raises(CacheError, match="not an aver cache"):
        CacheWriter.create_or_open(
            str(tmp_path / "o.zarr"), _index().table(), _attrs(), Capacity(7, 16), DIMS
        )


def test_the_working_store_opens_as_an_xarray_datatree_with_coordinates(tmp_path):
    """Every array has dimension names and the root holds the clip / fold / layer coordinates."""
    import warnings

    import xarray as xr

    from aver.testing import build_feature_cache

    url = build_feature_cache(str(tmp_path / "toy.zarr"), n_clips=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(url, engine="zarr", consolidated=False)
    frames = tree["frames"].to_dataset()
    assert frames["features"].sel(clip="c003").dims == ("frame", "feature")
    assert tree["fold"].values.tolist() == [1, 2, 3, 4, 5] and tree["layer"].size == 1
    assert tree["clips"]["label"].sel(clip="c004").item() == 1
