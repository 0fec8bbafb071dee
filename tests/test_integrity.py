"""Content digests: every committed clip records them; verify and the trainer catch damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from aver.cache import FeatureCache
from aver.errors import CacheError
from aver.testing import build_feature_cache


def _store(tmp_path: Path) -> str:
    return build_feature_cache(str(tmp_path / "toy.zarr"), n_clips=12, d_image=16, d_audio=8)


def _chunk(url: str, array: str, clip: int) -> Path:
    """The object holding ``array``'s chunk of ``clip`` (zarr v3 default chunk keys)."""
    ndim = len(FeatureCache(url).group[array].shape)
    return Path(url) / array / "c" / str(clip) / Path(*["0"] * (ndim - 1))


def test_a_clean_store_verifies(tmp_path):
    cache = FeatureCache(_store(tmp_path))
    problems, verified, unverifiable = cache.verify()
    assert problems == [] and verified == 12 and unverifiable == 0
    assert all(len(d) > 100 for d in cache.digests())  # one digest per array, recorded at commit


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_names_every_kind_of_damage(tmp_path):
    url = _store(tmp_path)
    _flip(_chunk(url, "frames/features", 1))  # a flipped byte
    path = _chunk(url, "audio/features", 3)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated chunk
    _chunk(url, "flow/features", 5).unlink()  # a deleted chunk
    a, b = _chunk(url, "frames/timestamp", 7), _chunk(url, "frames/timestamp", 8)
    tmp = a.with_name("swap")
    shutil.move(a, tmp), shutil.move(b, a), shutil.move(tmp, b)  # a swapped pair
    cache = FeatureCache(url)
    problems, verified, _ = cache.verify()
    found = {(p.clip, p.array) for p in problems}
    ids = cache.ids
    assert (ids[1], "frames/features") in found
    assert (ids[3], "audio/features") in found
    assert (ids[5], "flow/features") in found
    assert (ids[7], "frames/timestamp") in found and (ids[8], "frames/timestamp") in found
    assert {p.clip for p in problems} == {ids[i] for i in (1, 3, 5, 7, 8)} and verified == 7
    assert any("missing" in p.what for p in problems if p.clip == ids[5])


def test_training_refuses_a_damaged_clip_naming_it(tmp_path):
    from aver.train.data import DataConfig, load_clips

    url = _store(tmp_path)
    _flip(_chunk(url, "flow/features", 2))
    cache = FeatureCache(url)
    with pytest.raises(CacheError, match=f"flow/features of clip {cache.ids[2]}|clip {cache.ids[2]}"):
        load_clips(cache, np.arange(12), DataConfig())
    assert len(load_clips(cache, np.array([0, 1, 3]), DataConfig())) == 3  # the others load


def test_cli_verify_exit_codes_and_lines(tmp_path, capsys):
    from aver.cli import main

    url = _store(tmp_path)
    assert main(["cache", "verify", url, "-q"]) == 0
    assert "12 clips verified, 0 damaged" in capsys.readouterr().out
    _chunk(url, "frames/features", 4).unlink()
    assert main(["cache", "verify", url, "-q"]) == 4
    out = capsys.readouterr().out
    assert f"clip {FeatureCache(url).ids[4]}: frames/features: chunk missing" in out and "1 damaged" in out


@pytest.mark.slow
def test_verify_a_store_on_s3(tmp_path, s3_endpoint):
    import fsspec

    url = _store(tmp_path)
    fs = fsspec.filesystem("s3", **s3_endpoint)
    fs.put(url, "aver-caches/team/toy.zarr", recursive=True)
    remote = "s3://aver-caches/team/toy.zarr"
    assert FeatureCache(remote, s3_endpoint).verify()[:2] == ([], 12)
    key = "aver-caches/team/toy.zarr/audio/features/c/6/0/0/0"
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    problems, verified, _ = FeatureCache(remote, s3_endpoint).verify()
    assert [(p.clip, p.array) for p in problems] == [(FeatureCache(url).ids[6], "audio/features")]
