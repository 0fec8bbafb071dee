"""The trainer's cache reader works on a real extracted cache and never needs extract/."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aver.cache import FeatureCache
from aver.errors import CacheError


@pytest.mark.slow
def test_reader_on_extracted_cache(extracted_store):
    cache = FeatureCache(extracted_store)
    assert cache.classes == ["neutral", "happy"] and cache.n_folds == 3
    train, val, test = (cache.split_indices(1, s) for s in ("train", "validation", "test"))
    assert len(train) + len(val) + len(test) == 6
    assert not (set(cache.speakers[train]) & set(cache.speakers[test]))
    clip = cache.clip(int(test[0]))
    assert clip.frames.shape[0] == 20 and clip.flow.shape[0] == 19 and clip.audio.ndim == 3
    assert clip.frames.dtype == np.float16
    with pytest.raises(CacheError, match="fold 9"):
        cache.split_indices(9, "train")


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="aver extract"):
        FeatureCache(str(tmp_path / "nope.zarr"))


def test_train_never_imports_extract():
    code = (
        "import sys, aver.train.recipe, aver.train.report, aver.train.api, aver.cache; "
        "assert not any(m.startswith('aver.extract') for m in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pooled_audio_fragments_keep_the_tail():
    """The trainer's fragments (mean over `window` 50 Hz frames every `hop`) cover the last frames."""
    from aver.train.data import audio_fragments

    frames = np.arange(23, dtype=np.float32)[:, None, None].repeat(2, axis=2)  # [A=23, L=1, D=2]
    out = audio_fragments(frames, window=10, hop=5, layer=None)
    assert out[:, 0].tolist() == [4.5, 9.5, 14.5, 17.5]  # windows 0-9, 5-14, 10-19 and 13-22
    assert audio_fragments(frames[:20], 10, 5, None)[:, 0].tolist() == [4.5, 9.5, 14.5]  # no extra
    assert audio_fragments(frames[:7], 10, 5, 0)[:, 0].tolist() == [3.0]  # shorter than a window
