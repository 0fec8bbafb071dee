"""The end-to-end systems (mocanu2023, avtca) trained by the same trainer from a cache's crops and
waveforms: they learn, resume, evaluate, run every ablation, and refuse caches without inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aver.errors import CacheError, ConfigError
from aver.testing import add_toy_inputs, build_feature_cache
from aver.train import evaluate_run, train_fold
from aver.train.config import make_config

EMOTIONS = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def input_cache(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("e2e") / "toy.zarr")
    build_feature_cache(url, n_clips=48, n_classes=4, class_names=EMOTIONS, n_speakers=6)
    return add_toy_inputs(url)


def _cfg(cache, out, system, **kw):
    kw.setdefault("epochs", 12)
    overrides = kw.pop("overrides", [])
    return make_config("tiny", overrides, cache=cache, out=str(out), system=system, progress=False, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("system", ["mocanu2023", "avtca"])
def test_end_to_end_systems_learn_and_write_a_complete_run(input_cache, tmp_path, system):
    m = train_fold(_cfg(input_cache, tmp_path / system, system, epochs=30, patience=30))
    assert m["system"] == system and m["variant"] == "full" and not m["speaker_leaky"]
    assert m["validation"]["fusion"]["accuracy"] > 0.6  # chance: 0.25
    run = tmp_path / system
    for name in ("metrics.json", "predictions.csv", "config.json", "checkpoint/model.safetensors"):
        assert (run / name).exists(), name
    info = json.loads((run / "config.json").read_text())
    assert info["system"] == system and info["model_config"]["modality"] == "av"
    again = evaluate_run(run, input_cache)  # rebuilt from the checkpoint alone
    assert again["test"]["fusion"]["accuracy"] == pytest.approx(m["test"]["fusion"]["accuracy"])


@pytest.mark.parametrize(
    ("system", "variant", "head"),
    [
        ("mocanu2023", "audio_only", "audio"),
        ("mocanu2023", "softmax", "fusion"),
        ("avtca", "video_only", "video"),
    ],
)
def test_ablations_train_through_the_trainer(input_cache, tmp_path, system, variant, head):
    m = train_fold(_cfg(input_cache, tmp_path / "r", system, variant=variant, epochs=2))
    assert m["reported_head"] == head and np.isfinite(
        m["test"][head]["loss"] if "loss" in m["test"][head] else 0
    )


def test_resume_continues_an_end_to_end_run(input_cache, tmp_path):
    full = train_fold(_cfg(input_cache, tmp_path / "full", "avtca", epochs=4, patience=10))
    train_fold(_cfg(input_cache, tmp_path / "part", "avtca", epochs=2, patience=10))
    resumed = train_fold(_cfg(input_cache, tmp_path / "part", "avtca", epochs=4, patience=10))
    assert resumed["test"]["fusion"]["accuracy"] == pytest.approx(full["test"]["fusion"]["accuracy"])
    h1 = json.loads((tmp_path / "full" / "history.json").read_text())
    h2 = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [r["train_loss"] for r in h1] == pytest.approx([r["train_loss"] for r in h2])


def test_a_cache_without_inputs_is_refused_with_the_fix(tmp_path):
    url = build_feature_cache(str(tmp_path / "plain.zarr"), n_clips=12, n_classes=4, class_names=EMOTIONS)
    with pytest.raises(CacheError, match="--inputs crops,wave"):
        train_fold(_cfg(url, tmp_path / "r", "mocanu2023"))
    de3 = train_fold(make_config("tiny", cache=url, out=str(tmp_path / "d"), epochs=1, progress=False))
    assert de3["system"] == "de3"  # the layout-1 path is unchanged


def test_unknown_variant_and_model_keys_are_refused(input_cache, tmp_path):
    with pytest.raises(ConfigError, match="avtca variant"):
        _cfg(input_cache, tmp_path, "avtca", variant="no_ife")
    with pytest.raises(ConfigError, match="model key"):
        _cfg(input_cache, tmp_path, "mocanu2023", overrides=["model.d_hidden=3"])


def test_protocols_give_their_folds_and_say_when_they_leak(input_cache, tmp_path):
    from aver.cache import FeatureCache
    from aver.layout import TEST, TRAIN
    from aver.train.protocols import protocol_folds

    cache = FeatureCache(input_cache)
    ten = protocol_folds(cache.speakers, cache.labels, "mocanu2023-10fold")
    assert ten.shape == (6, 48)  # 6 speakers: at most one group per speaker
    for row in ten:
        assert not set(cache.speakers[row == TEST]) & set(cache.speakers[row == TRAIN])
    rnd = protocol_folds(cache.speakers, cache.labels, "avtca-random")
    assert rnd.shape == (5, 48)
    for c in range(4):  # class-balanced 20 % test
        assert (rnd[0][cache.labels == c] == TEST).sum() == round(0.2 * 12)
    assert set(cache.speakers[rnd[0] == TEST]) & set(cache.speakers[rnd[0] == TRAIN])  # leaky
    m = train_fold(_cfg(input_cache, tmp_path / "leaky", "avtca", epochs=1, protocol="avtca-random"))
    assert m["speaker_leaky"] and m["protocol"] == "avtca-random"


@pytest.mark.slow
def test_cv_under_two_protocols_prints_them_side_by_side(input_cache, tmp_path, capsys):
    from aver.cli import main

    out = str(tmp_path / "cv")
    code = main(
        ["cv", "--cache", input_cache, "--model", "avtca", "--preset", "tiny", "--epochs", "1", "-q"]
        + ["--protocols", "cache,avtca-random", "--out", out]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "| metric | cache | avtca-random (speaker-leaky) | difference |" in text
    assert "| accuracy |" in text
    leaky = json.loads((tmp_path / "cv@avtca-random" / "fold1" / "metrics.json").read_text())
    assert leaky["speaker_leaky"] and (tmp_path / "cv" / "cv_summary.json").exists()


def test_a_layout_1_cache_still_trains_de3(tmp_path):
    """A cache written before layout 2 (no inputs, layout_version 1) trains DE-III as before."""
    import zarr

    from aver import layout as L

    url = build_feature_cache(str(tmp_path / "old.zarr"), n_clips=15, n_classes=3)
    g = zarr.open_group(url, mode="r+")
    g.attrs[L.ATTRS_KEY] = {**dict(g.attrs[L.ATTRS_KEY]), "layout_version": 1}
    m = train_fold(make_config("tiny", cache=url, out=str(tmp_path / "r"), epochs=1, progress=False))
    assert m["system"] == "de3" and np.isfinite(m["test_reported"]["accuracy"])


def test_crops_read_per_batch_train_the_same_as_crops_in_memory(input_cache, tmp_path):
    """A fold too big for memory reads its crops from the cache batch by batch: same numbers."""
    a = train_fold(
        _cfg(input_cache, tmp_path / "mem", "avtca", epochs=2, overrides=["data.inputs_in_memory=true"])
    )
    b = train_fold(
        _cfg(input_cache, tmp_path / "lazy", "avtca", epochs=2, overrides=["data.inputs_in_memory=false"])
    )
    assert a["test"]["fusion"]["accuracy"] == b["test"]["fusion"]["accuracy"]
    ha = json.loads((tmp_path / "mem" / "history.json").read_text())
    hb = json.loads((tmp_path / "lazy" / "history.json").read_text())
    assert [r["train_loss"] for r in ha] == pytest.approx([r["train_loss"] for r in hb], abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("system", ["mocanu2023", "avtca"])
def test_end_to_end_training_on_cuda_matches_the_host_path(input_cache, tmp_path, system):
    """On a GPU: crops resident on the device, augmentation and spectrograms there, bf16 AMP; the
    run learns as on the CPU, and resident vs per-batch copies give the same losses (no AMP)."""
    kw = {"epochs": 3, "patience": 10}
    a = train_fold(_cfg(input_cache, tmp_path / "a", system, device="cuda", amp=False, resident=True, **kw))
    train_fold(_cfg(input_cache, tmp_path / "b", system, device="cuda", amp=False, resident=False, **kw))
    ha = json.loads((tmp_path / "a/history.json").read_text())
    hb = json.loads((tmp_path / "b/history.json").read_text())
    np.testing.assert_allclose([h["train_loss"] for h in ha], [h["train_loss"] for h in hb], rtol=1e-3)
    amp = train_fold(_cfg(input_cache, tmp_path / "amp", system, device="cuda", amp=True, **kw))
    assert np.isfinite(amp["test"]["fusion"]["accuracy"]) and a["system"] == system
