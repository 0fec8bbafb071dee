"""End-to-end inputs in the cache (layout 2): crops and waveforms, written with the clip or added
later to a finished store, equal to what the pipeline computed; older stores still read."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import small_index

from aver import layout as L
from aver.cache import FeatureCache
from aver.errors import CacheMismatchError
from aver.overrides import apply_overrides

INPUTS = ["inputs.crops=true", "inputs.crop_frames=6", "inputs.crop_size=48", "inputs.wave=true"]


def _extract(cfg, corpus, url, **kw):
    from aver.extract.pipeline import run_extraction

    return run_extraction(cfg, small_index(corpus), url, progress=False, **kw)


@pytest.fixture(scope="module")
def input_store(small_corpus, tiny_config, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("inputs") / "synthetic.zarr")
    s = _extract(apply_overrides(tiny_config, INPUTS), small_corpus, url)
    assert s.failed == 0, s.report()
    return url


def test_crops_equal_the_pipeline_crops(input_store, small_corpus, tiny_config):
    """The stored crops are the pipeline's own crops of the stored boxes, sampled and resized."""
    import torch

    from aver.extract.clip import _crop_pass
    from aver.extract.inputs import crop_indices, resize_crops
    from aver.extract.media import load_audio

    cache = FeatureCache(input_store)
    g = cache.group
    assert cache.meta["layout_version"] == L.LAYOUT_VERSION == 2
    rec = small_index(small_corpus).clips[1]
    i = list(cache.ids).index(rec.clip_id)
    n = int(g[L.N_FRAMES][i])
    idx = crop_indices(n, 6)
    assert int(g[L.N_CROPS][i]) == 6 and g[L.CROP_INDEX][i].tolist() == idx.tolist()
    full = _crop_pass(rec.video, g[L.FACE_BOX][i][:n], n, tiny_config, torch.no_grad())
    want = resize_crops(full[torch.as_tensor(idx)], 48)
    np.testing.assert_array_equal(g[L.CROPS][i][:6], want)
    assert g[L.CROPS].shape[1:] == (6, 48, 48, 3) and g[L.CROPS].dtype == np.uint8
    wave = load_audio(rec.video, 16000)
    nw = int(g[L.N_WAVE][i])
    assert nw == len(wave)
    np.testing.assert_allclose(g[L.WAVE][i][:nw] / L.WAVE_SCALE, wave, atol=1 / 32768 + 1e-7)
    assert (g[L.INPUT_STATUS][:] == L.DONE).all()


def test_crop_indices_uniform_and_distinct():
    from aver.extract.inputs import crop_indices

    assert crop_indices(10, 0).tolist() == list(range(10))
    assert crop_indices(4, 16).tolist() == [0, 1, 2, 3]
    idx = crop_indices(97, 16)
    assert idx[0] == 0 and idx[-1] == 96 and len(set(idx.tolist())) == 16


def test_inputs_added_to_a_finished_store_fill_only_what_is_missing(
    extracted_store, input_store, small_corpus, tiny_config, tmp_path
):
    """A store extracted without inputs gets them later: features untouched, crops identical to
    those written during extraction, and a rerun has nothing left to do."""
    url = str(tmp_path / "later.zarr")
    shutil.copytree(extracted_store, url)
    before = FeatureCache(url).read_features(np.arange(6))
    s = _extract(apply_overrides(tiny_config, INPUTS), small_corpus, url)
    assert s.done == 0 and s.inputs_filled == 6 and s.failed == 0, s.report()
    assert "inputs added to 6 clips" in s.report()
    later, direct = FeatureCache(url).group, FeatureCache(input_store).group
    for name in (L.CROPS, L.CROP_INDEX, L.WAVE, L.N_CROPS, L.N_WAVE, L.INPUT_DIGEST):
        np.testing.assert_array_equal(later[name][:], direct[name][:], err_msg=name)
    after = FeatureCache(url).read_features(np.arange(6))
    for m in before:
        for a, b in zip(before[m], after[m], strict=True):
            np.testing.assert_array_equal(a, b)
    again = _extract(tiny_config, small_corpus, url)  # no inputs flags: the store's are kept
    assert again.inputs_filled == 0 and again.done == 0


def test_inputs_resume_after_an_interrupted_fill(extracted_store, small_corpus, tiny_config, tmp_path):
    url = str(tmp_path / "partial.zarr")
    shutil.copytree(extracted_store, url)
    first = _extract(apply_overrides(tiny_config, INPUTS), small_corpus, url, limit=2)
    assert first.inputs_filled == 2
    rest = _extract(apply_overrides(tiny_config, INPUTS), small_corpus, url)
    assert rest.inputs_filled == 4


def test_other_input_settings_are_refused(input_store, small_corpus, tiny_config, tmp_path):
    url = str(tmp_path / "copy.zarr")
    shutil.copytree(input_store, url)
    other = apply_overrides(tiny_config, [*INPUTS[:2], "inputs.crop_size=64", INPUTS[3]])
    with pytest.raises(CacheMismatchError, match="inputs.crop_size: 48 -> 64"):
        _extract(other, small_corpus, url)


def test_missing_raw_video_fails_only_that_clips_inputs(extracted_store, small_corpus, tiny_config, tmp_path):
    """Filling needs the raw media: a clip whose video is gone is reported, its features stay."""
    import dataclasses

    from aver.extract.pipeline import run_extraction

    url = str(tmp_path / "s.zarr")
    shutil.copytree(extracted_store, url)
    index = small_index(small_corpus)
    bad = tmp_path / "gone.mp4"
    bad.write_bytes(b"not a video")
    victim = index.clips[0] = dataclasses.replace(index.clips[0], video=str(bad))
    s = run_extraction(apply_overrides(tiny_config, INPUTS), index, url, progress=False)
    assert s.inputs_filled == 5 and victim.clip_id in s.failures
    g = FeatureCache(url).group
    i = list(g[L.CLIP_ID][:]).index(victim.clip_id)
    assert g[L.INPUT_STATUS][i] == L.FAILED and g[L.STATUS][i] == L.DONE


def test_layout_1_store_still_opens(extracted_store, tmp_path):
    """A store written before layout 2 (no inputs) opens and reads as before."""
    import zarr

    url = str(tmp_path / "old.zarr")
    shutil.copytree(extracted_store, url)
    g = zarr.open_group(url, mode="r+")
    meta = dict(g.attrs[L.ATTRS_KEY])
    meta["layout_version"] = 1
    g.attrs[L.ATTRS_KEY] = meta
    cache = FeatureCache(url)
    assert len(cache.read_features(np.arange(2))["frames"]) == 2
    assert not L.has_array(cache.group, L.CROPS)


def test_info_read_and_pack_carry_the_inputs(input_store, extracted_store, tmp_path):
    from aver.cli.cache import systems
    from aver.info import describe
    from aver.pack import pack

    text = describe(input_store, systems=systems())
    assert "face crops (6 frames at 48 px) + waveforms (16000 Hz); 6 of 6 done clips" in text
    trains = next(line for line in text.splitlines() if line.startswith("trains:"))
    assert all(name in trains for name in ("de3", "mocanu2023", "avtca")), trains
    assert "trains: de3 (add crops" in describe(extracted_store, systems=systems())
    got = FeatureCache(input_store).read_inputs(np.array([3, 0]))
    assert [c.shape for c in got["crops"]] == [(6, 48, 48, 3)] * 2 and got["wave"][0].dtype == np.int16
    packed = str(tmp_path / "packed.zarr")
    pack(input_store, packed, progress=False)
    again = FeatureCache(packed).read_inputs(np.array([3, 0]))
    for a, b in zip(got["crops"] + got["wave"], again["crops"] + again["wave"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_damaged_inputs_are_named(input_store, tmp_path):
    import zarr

    from aver.errors import CacheError

    url = str(tmp_path / "bad.zarr")
    shutil.copytree(input_store, url)
    g = zarr.open_group(url, mode="r+")
    row = g[L.CROPS][2]
    row[0, 0, 0, 0] ^= 0xFF
    g[L.CROPS][2] = row
    cache = FeatureCache(url)
    with pytest.raises(CacheError, match=f"inputs of clip {cache.ids[2]} differ"):
        cache.read_inputs(np.array([2]))
    assert len(cache.read_inputs(np.array([1]))["crops"]) == 1


def test_a_named_protocol_can_be_chosen_at_extraction(small_corpus):
    from aver.layout import TEST, TRAIN

    index = small_index(small_corpus, protocol="avtca-random")
    assert index.folds.shape == (5, 6) and index.folds_source == "protocol avtca-random"
    assert ((index.folds == TEST).sum(1) == 2).all() and ((index.folds == TRAIN).sum(1) == 4).all()
    ten = small_index(small_corpus, protocol="mocanu2023-10fold")
    assert ten.folds.shape == (3, 6) and ten.folds_source == "protocol mocanu2023-10fold"
