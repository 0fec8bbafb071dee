"""The one reader (aver.cache.FeatureCache) refuses damaged or hostile caches with one clear error.

Every case names the store, the array and (where there is one) the clip; none allocates beyond the
layout's limits, none prints a traceback through the CLI.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest
import zarr

from aver import layout as L
from aver.cache import FeatureCache
from aver.errors import CacheError, TrainingError
from aver.testing import build_feature_cache


@pytest.fixture
def toy(tmp_path) -> str:
    return build_feature_cache(str(tmp_path / "toy.zarr"), n_clips=12, n_classes=2)


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@pytest.mark.parametrize(
    ("array", "shape"),
    [("clips/status", [2_000_000_000]), ("frames/features", [12, 2_000_000_000, 12]), ("clips/id", [12, 3])],
)
def test_an_edited_shape_is_refused_without_allocating(toy, array, shape):
    before = _rss_gib()
    _edit_json(Path(toy) / array / "zarr.json", lambda m: m.update(shape=shape))
    with pytest.raises(CacheError, match=f"damaged cache: ({array}|size|clip table)"):
        FeatureCache(toy)
    assert _rss_gib() - before < 1.0


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("capacity", {"frames": 2_000_000_000, "audio": 40}, "size T"),
        ("dims", {"image": 12, "audio": 8, "audio_layers": 1, "audio_rate_hz": 50.0, "x": 1}, None),
        (
            "dims",
            {"image": "12; rm -rf /", "audio": 8, "audio_layers": 1, "audio_rate_hz": 50},
            "attrs.aver.dims",
        ),
        ("layout_version", "1", "layout '1'"),
        ("layout_version", 99, "layout 99"),
    ],
)
def test_edited_attributes(toy, key, value, match):
    g = zarr.open_group(toy, mode="r+")
    meta = dict(g.attrs["aver"])
    meta[key] = value
    g.attrs["aver"] = meta
    if match is None:  # an extra key is harmless
        assert len(FeatureCache(toy)) == 12
        return
    with pytest.raises(CacheError, match=match):
        FeatureCache(toy)


def test_a_length_beyond_the_capacity_is_refused(toy):
    zarr.open_group(toy, mode="r+")["clips/n_frames"][3] = 10_000
    with pytest.raises(CacheError, match="c003 has clips/n_frames = 10000"):
        FeatureCache(toy)


def test_a_damaged_chunk_names_the_clip_and_the_array(toy):
    chunk = Path(toy) / "flow" / "features" / "c" / "5" / "0" / "0"
    chunk.write_bytes(b"\x00garbage" * 8)
    cache = FeatureCache(toy)
    with pytest.raises(CacheError, match=r"flow/features of clip c005 \(row 5\) cannot be read"):
        cache.read_features(np.arange(12))
    # found while the fold loads, before the run folder is made
    from aver.train import train_fold

    run = Path(toy).parent / "run"
    with pytest.raises(CacheError, match="c005"):
        train_fold(toy, 1, preset="tiny", out=str(run), epochs=1)
    assert not run.exists()


def test_non_finite_features_and_targets_are_refused_at_load(toy, tmp_path):
    g = zarr.open_group(toy, mode="r+")
    row = g["audio/features"][4]
    row[0, 0, 0] = np.nan
    g["audio/features"][4] = row
    with pytest.raises(CacheError, match="clip c004 has non-finite values .* in audio/features"):
        FeatureCache(toy).read_features(np.array([4]))
    reg = build_feature_cache(str(tmp_path / "reg.zarr"), n_clips=12, targets=("arousal",))
    zarr.open_group(reg, mode="r+")["clips/targets"][2, 0] = np.inf
    from aver.train.data import DataConfig, load_clips

    with pytest.raises(CacheError, match="c002 has non-finite targets"):
        load_clips(FeatureCache(reg), np.arange(12), DataConfig())


def test_the_writer_refuses_non_finite_features(tmp_path):
    from aver.store import CacheWriter, ClipResult

    url = build_feature_cache(str(tmp_path / "w.zarr"), n_clips=6)
    bad = np.full((3, 12), np.nan, np.float16)
    r = ClipResult(
        bad,
        bad[:2],
        np.zeros((6, 1, 8), np.float16),
        np.zeros(3, np.float32),
        np.zeros((3, 4), np.float32),
        np.ones(3, np.float32),
        np.ones(3, bool),
        25.0,
    )
    with pytest.raises(ValueError, match="frames/features has non-finite"):
        CacheWriter(url).write_clip(0, r)
    assert FeatureCache(url).status[0] == L.DONE  # the earlier commit is untouched


def test_a_non_finite_loss_stops_training_naming_the_clips(toy, tmp_path, monkeypatch):
    from aver.train import train_fold
    from aver.train.tasks import Classification

    monkeypatch.setattr(Classification, "head_loss", lambda self, out, truth: out.sum() * float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite training loss .* clips \['c0"):
        train_fold(toy, 1, preset="tiny", out=str(tmp_path / "run"), epochs=1)


def test_info_escapes_control_characters(tmp_path):
    from aver.info import describe

    url = build_feature_cache(str(tmp_path / "e.zarr"), n_clips=6, dataset="evil\x1b[2J\x07")
    text = describe(url)
    assert "\x1b" not in text and "\x07" not in text and "evil\\x1b[2J\\x07" in text


def test_a_cache_written_before_aver_0_2_is_read_and_trains(tmp_path):
    """Stores from aver 0.1 have no clips/note, no dimension names on the clip table, no flow.sigma
    in their config and no digests in checkpoints: they are read, trained on and described as before."""
    import shutil

    from aver.info import describe
    from aver.train import train_fold

    url = build_feature_cache(str(tmp_path / "old.zarr"), n_clips=20)
    shutil.rmtree(Path(url) / "clips" / "note")
    for name in ("clips/id", "clips/speaker", "clips/video", "clips/label"):
        _edit_json(Path(url) / name / "zarr.json", lambda m: m.pop("dimension_names", None))
    g = zarr.open_group(url, mode="r+")
    meta = dict(g.attrs["aver"])
    meta["config"] = {}
    meta.pop("split_codes")
    g.attrs["aver"] = meta
    cache = FeatureCache(url)
    assert (cache.notes() == "").all() and cache.flow_schedule == (1, 1)
    assert "clips:    20" in describe(url)
    metrics = train_fold(url, 1, preset="tiny", out=str(tmp_path / "run"), epochs=1)
    assert metrics["fold"] == 1
