"""aver cache merge / diff: a dataset extracted in two halves equals one extraction, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_index

from aver import layout as L
from aver.errors import CacheMismatchError
from aver.layout import open_root


def _half(small_corpus, tiny_config, url: str, indices: list[int]) -> str:
    from aver.extract.pipeline import extract_indices, run_extraction
    from aver.store import CacheWriter

    index = small_index(small_corpus)
    run_extraction(tiny_config, index, url, limit=0, progress=False)  # the template only
    writer = CacheWriter(url)
    extract_indices(indices, index, tiny_config, writer, writer.capacity(), progress=False)
    return url


@pytest.mark.slow
def test_two_halves_merge_into_the_one_run_store(extracted_store, small_corpus, tiny_config, tmp_path):
    from aver.cli import main
    from aver.merge import diff, merge

    a = _half(small_corpus, tiny_config, str(tmp_path / "a.zarr"), [0, 1, 2])
    b = _half(small_corpus, tiny_config, str(tmp_path / "b.zarr"), [2, 3, 4, 5])  # clip 2 in both
    assert any("3 clips pending in A, done in B" in line for line in diff(a, b))
    summary = merge([a, b], str(tmp_path / "m.zarr"), progress=False)
    assert summary["clips"] == 6
    merged, ref = open_root(str(tmp_path / "m.zarr"), "r"), open_root(extracted_store, "r")
    for name, spec in L.ARRAYS.items():
        group, _, leaf = name.partition("/")
        if L.has_array(ref, name):
            x, y = ref[name][:], merged[name][:]
            assert x.shape == y.shape and np.array_equal(x, y, equal_nan=spec.dtype != "str"), name
    chunk = "frames/features/c/4/0/0"
    assert (tmp_path / "m.zarr" / chunk).read_bytes() == open(f"{extracted_store}/{chunk}", "rb").read()
    assert diff(extracted_store, str(tmp_path / "m.zarr")) == []
    assert main(["cache", "diff", extracted_store, str(tmp_path / "m.zarr")]) == 0
    assert main(["cache", "verify", str(tmp_path / "m.zarr"), "-q"]) == 0


@pytest.mark.slow
def test_merge_refuses_other_configs_and_conflicting_clips(
    extracted_store, small_corpus, tiny_config, tmp_path
):
    from aver.merge import merge
    from aver.overrides import apply_overrides

    other = apply_overrides(tiny_config, ["face.margin=0.3"])
    b = _half(small_corpus, other, str(tmp_path / "b.zarr"), [3])
    with pytest.raises(CacheMismatchError, match="config_hash .*face"):
        merge([extracted_store, b], str(tmp_path / "m.zarr"), progress=False)
    _half(small_corpus, tiny_config, str(tmp_path / "c.zarr"), [1])
    from aver.cache import FeatureCache
    from aver.store import CacheWriter, ClipResult

    clip = FeatureCache(str(tmp_path / "c.zarr")).clip(1)  # the same clip committed with other content
    t = len(clip.frames)
    g = open_root(str(tmp_path / "c.zarr"), "r")
    other_frames = clip.frames.copy()
    other_frames[0, 0] += 1
    CacheWriter(str(tmp_path / "c.zarr")).write_clip(
        1,
        ClipResult(
            other_frames,
            clip.flow,
            clip.audio,
            g["frames/timestamp"][1, :t],
            g["frames/face_box"][1, :t],
            g["frames/face_prob"][1, :t],
            g["frames/face_mask"][1, :t],
            float(g["clips/fps"][1]),
        ),
    )
    with pytest.raises(CacheMismatchError, match="committed in .* with different content"):
        merge([extracted_store, str(tmp_path / "c.zarr")], str(tmp_path / "m2.zarr"), progress=False)
