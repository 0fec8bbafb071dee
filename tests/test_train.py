"""The trainer end to end on small caches: outputs, reproducibility, resume, provenance checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aver.errors import CheckpointError
from aver.testing import build_feature_cache as make_feature_cache
from aver.train import evaluate_run, train_fold
from aver.train.api import summarise_folds
from aver.train.config import make_config

TINY_MODEL = {"d_model": 16, "d_hidden": 24, "n_heads": 2, "head_hidden": 16, "conv_kernel": 3}


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> str:
    return make_feature_cache(str(tmp_path_factory.mktemp("toy") / "toy.zarr"))


def _cfg(cache: str, out: Path, model: dict = TINY_MODEL, **kw):
    kw.setdefault("epochs", 3)
    return make_config("tiny", {f"model.{k}": v for k, v in model.items()}, cache=cache, out=str(out), **kw)


def test_tiny_train_writes_a_complete_run(toy_cache, tmp_path):
    metrics = train_fold(_cfg(toy_cache, tmp_path / "run", epochs=6))
    run = tmp_path / "run"
    for name in (
        "config.json",
        "metrics.json",
        "predictions.csv",
        "history.json",
        "history.csv",
        "train.log",
        "confusion.png",
        "learning_curves.png",
        "attention.png",
        "checkpoint/model.safetensors",
        "checkpoint/checkpoint.json",
        "checkpoint/last.safetensors",
    ):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved) >= {"train", "validation", "test", "reported_head", "test_reported"}
    assert set(saved["test"]) >= {"video", "audio", "fusion", "loss"}
    assert metrics["reported_head"] in ("video", "audio", "fusion")
    rows = (run / "predictions.csv").read_text().strip().splitlines()
    assert rows[0].startswith("clip_id,label,prediction,video_class0")
    assert len(rows) - 1 == sum(metrics["test"]["video"]["support"].values())
    # the toy features carry the label: the tiny model must learn them
    assert metrics["test_reported"]["accuracy"] > 0.6, metrics["test_reported"]
    # per-epoch scalars in TensorBoard event files, read back with TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    history = json.loads((run / "history.json").read_text())
    assert {"loss/train", "loss/val", "validation/metric", "validation/video"} <= set(
        events.Tags()["scalars"]
    )
    train_loss = events.Scalars("loss/train")
    assert [e.step for e in train_loss] == [row["epoch"] for row in history]
    assert [e.value for e in train_loss] == pytest.approx([row["train_loss"] for row in history])


def test_same_seed_same_run(toy_cache, tmp_path):
    a = train_fold(_cfg(toy_cache, tmp_path / "a"))
    b = train_fold(_cfg(toy_cache, tmp_path / "b"))
    assert a["test"] == b["test"]
    assert (tmp_path / "a/predictions.csv").read_text() == (tmp_path / "b/predictions.csv").read_text()


def test_resume_continues_and_matches_an_uninterrupted_run(toy_cache, tmp_path):
    full = train_fold(_cfg(toy_cache, tmp_path / "full", epochs=4, patience=10))
    train_fold(_cfg(toy_cache, tmp_path / "cut", epochs=2, patience=10))
    resumed = train_fold(_cfg(toy_cache, tmp_path / "cut", epochs=4, patience=10))
    history = json.loads((tmp_path / "cut/history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    full_hist = json.loads((tmp_path / "full/history.json").read_text())
    np.testing.assert_allclose(
        [h["train_loss"] for h in history], [h["train_loss"] for h in full_hist], rtol=1e-5
    )
    assert resumed["test"] == full["test"]


def test_a_kill_while_saving_the_state_resumes_as_if_uninterrupted(toy_cache, tmp_path, monkeypatch):
    """Regression: the resumable state was two files; a kill between their renames tore it."""
    import aver.utils

    full = train_fold(_cfg(toy_cache, tmp_path / "full", epochs=3, patience=10))
    real_replace, calls = aver.utils.os.replace, []

    def dying_replace(src, dst):
        calls.append(dst)
        if (
            str(dst).endswith("last.safetensors")
            and len([c for c in calls if str(c).endswith("last.safetensors")]) == 2
        ):
            raise KeyboardInterrupt  # killed while committing epoch 2
        return real_replace(src, dst)

    monkeypatch.setattr(aver.utils.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        train_fold(_cfg(toy_cache, tmp_path / "cut", epochs=3, patience=10))
    monkeypatch.setattr(aver.utils.os, "replace", real_replace)
    assert not list((tmp_path / "cut/checkpoint").glob(".*tmp*")), "no temporary file is left behind"
    resumed = train_fold(_cfg(toy_cache, tmp_path / "cut", epochs=3, patience=10))
    assert resumed["test"] == full["test"]
    # the epoch lost to the kill is not in the history or the TensorBoard events twice
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "cut" / "tensorboard")).Reload().Scalars("loss/train")
    assert [e.step for e in events] == [1, 2, 3]
    assert [h["epoch"] for h in json.loads((tmp_path / "cut/history.json").read_text())] == [1, 2, 3]
    assert not (tmp_path / "cut/checkpoint/trainer_state.json").exists()


def test_resume_refuses_another_architecture(toy_cache, tmp_path):
    train_fold(_cfg(toy_cache, tmp_path / "run", epochs=1))
    other = {**TINY_MODEL, "d_model": 8}
    with pytest.raises(CheckpointError, match="architecture"):
        train_fold(_cfg(toy_cache, tmp_path / "run", epochs=2, model=other))


def test_evaluate_refuses_a_cache_with_other_provenance(toy_cache, tmp_path):
    train_fold(_cfg(toy_cache, tmp_path / "run", epochs=1))
    again = evaluate_run(str(tmp_path / "run"), toy_cache)
    assert again["reported_head"] in ("video", "audio", "fusion")
    assert (tmp_path / "run/evaluations/toy.zarr/metrics.json").is_file()
    other = make_feature_cache(str(tmp_path / "other.zarr"), config_hash="another-extraction")
    with pytest.raises(CheckpointError, match="config_hash"):
        evaluate_run(str(tmp_path / "run"), other)
    # regression: another subset extracted with the same config was accepted and overwrote the run
    subset = make_feature_cache(str(tmp_path / "subset.zarr"), n_clips=30)
    own = (tmp_path / "run/metrics.json").read_text()
    with pytest.raises(CheckpointError, match="clips_sha256"):
        evaluate_run(str(tmp_path / "run"), subset)
    assert (tmp_path / "run/metrics.json").read_text() == own


def test_regression_with_several_targets(tmp_path):
    cache = make_feature_cache(str(tmp_path / "reg.zarr"), targets=("arousal", "valence", "dominance"))
    metrics = train_fold(_cfg(cache, tmp_path / "run", epochs=2))
    assert metrics["task"] == "regression"
    assert set(metrics["test_reported"]["ccc"]) == {"arousal", "valence", "dominance"}
    assert -1 <= metrics["test_reported"]["ccc_mean"] <= 1
    header = (tmp_path / "run/predictions.csv").read_text().splitlines()[0]
    assert header.startswith("clip_id,true_arousal,true_valence,true_dominance,pred_arousal")


def test_summarise_folds():
    s = summarise_folds({1: {"accuracy": 0.5, "n": 8}, 2: {"accuracy": 0.7, "n": 9}})
    assert s["accuracy"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414, abs=1e-4), "n": 2}
    assert "n" not in s  # the test-set size is not a metric
    assert summarise_folds({1: {"accuracy": 0.5}})["accuracy"]["std"] is None


def test_cli_cv_evaluate_and_refusal(toy_cache, tmp_path):
    """`aver cv` over two folds, then `aver evaluate` of one fold; another cache is refused (exit 5)."""
    import subprocess
    import sys

    model = [f"--set=model.{k}={v}" for k, v in TINY_MODEL.items()]
    base = [sys.executable, "-m", "aver"]
    cv = subprocess.run(
        [
            *base,
            "cv",
            "--cache",
            toy_cache,
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--folds",
            "1,2",
            "--out",
            str(tmp_path / "cv"),
            *model,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cv.returncode == 0, cv.stderr[-2000:]
    summary = json.loads((tmp_path / "cv/cv_summary.json").read_text())
    assert set(summary["runs"]) == {"fold1", "fold2"} and summary["summary"]["reported"]["accuracy"]["n"] == 2
    assert (
        set(summary["summary"]) == {"reported", "video", "audio", "fusion"} and "ddof = 1" in summary["std"]
    )
    assert (tmp_path / "cv/cv_summary.csv").read_text().startswith("head,metric,mean,std,n")
    md = (tmp_path / "cv/cv_summary.md").read_text()
    assert "| head | accuracy | f1_macro | f1_micro | uar |" in md and "\n| reported | " in md
    assert "accuracy" in cv.stdout and "mean" in cv.stdout
    ev = subprocess.run(
        [*base, "evaluate", "--run", str(tmp_path / "cv/fold2"), "--cache", toy_cache],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0 and "fold 2" in ev.stdout, ev.stderr[-2000:]
    assert (tmp_path / "cv/fold2/evaluations/toy.zarr/predictions.csv").is_file()
    other = make_feature_cache(str(tmp_path / "other.zarr"), config_hash="other")
    bad = subprocess.run(
        [*base, "evaluate", "--run", str(tmp_path / "cv/fold2"), "--cache", other],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 5 and "config_hash" in bad.stderr, bad.stderr[-2000:]


def test_hostile_names_reach_neither_spreadsheet_formulas_nor_mathtext(tmp_path):
    """Regression: `=HYPERLINK(...)` ids went unescaped into predictions.csv; a `$` in a class name
    crashed matplotlib after the metrics were written."""
    import csv

    names = ["=HYPERLINK(1)", "$x_1$", "@cmd"]
    url = make_feature_cache(str(tmp_path / "h.zarr"), class_names=names, id_prefix="=1+")
    train_fold(_cfg(url, tmp_path / "run", epochs=1))
    rows = list(csv.reader(open(tmp_path / "run/predictions.csv")))
    assert all(r[0].startswith("'=1+") for r in rows[1:])
    assert all(cell[:1] not in "=+-@" for r in rows for cell in r[:3])
    assert (tmp_path / "run/confusion.png").stat().st_size > 1000


def test_resume_with_changed_settings_is_refused_and_restart_starts_over(toy_cache, tmp_path):
    """Regression: a fold resumed at epoch 3 with `epochs: 2` and the summary silently included it."""
    train_fold(_cfg(toy_cache, tmp_path / "run", epochs=3, patience=10))
    with pytest.raises(CheckpointError, match=r"trained 3 epochs, more than --epochs 2.*--restart"):
        train_fold(_cfg(toy_cache, tmp_path / "run", epochs=2, patience=10))
    with pytest.raises(CheckpointError, match=r"other settings \(lr: 0.001 -> 0.002\).*--restart"):
        train_fold(_cfg(toy_cache, tmp_path / "run", epochs=3, patience=10, lr=2e-3))
    metrics = train_fold(_cfg(toy_cache, tmp_path / "run", epochs=2, patience=10, resume=False))
    assert len(json.loads((tmp_path / "run/history.json").read_text())) == 2 and metrics["fold"] == 1


def test_a_forced_head_chooses_the_epoch_and_is_reported_as_forced(toy_cache, tmp_path):
    metrics = train_fold(_cfg(toy_cache, tmp_path / "run", epochs=3, head="audio"))
    assert metrics["reported_head"] == "audio" and metrics["head_selection"] == "forced (--head)"
    history = json.loads((tmp_path / "run/history.json").read_text())
    assert {h["val_head"] for h in history} == {"audio"}
    best = max(history, key=lambda h: h["val_audio"])
    saved = json.loads((tmp_path / "run/checkpoint/checkpoint.json").read_text())
    assert saved["epoch"] == best["epoch"] and saved["val_head"] == "audio"


def test_cross_validation_with_seeds(toy_cache, tmp_path):
    from aver.train import cross_validate

    model = {f"model.{k}": v for k, v in TINY_MODEL.items()}
    summary = cross_validate(
        toy_cache, [1], seeds=2, preset="tiny", out=str(tmp_path / "cv"), epochs=1, overrides=model
    )
    assert summary["reported"]["accuracy"]["n"] == 2
    for s in (0, 1):
        saved = json.loads((tmp_path / f"cv/fold1/seed{s}/checkpoint/checkpoint.json").read_text())
        assert saved["train_config"]["seed"] == s


def test_cross_validation_in_parallel_processes_matches_serial(toy_cache, tmp_path):
    """aver cv --workers 2: the runs train in two processes at once and give the serial runs'
    results (the CPU's threads are shared out, so sums may differ in the last bits)."""
    from aver.train import cross_validate

    model = {f"model.{k}": v for k, v in TINY_MODEL.items()}
    kw = {"preset": "tiny", "epochs": 2, "overrides": model}
    serial = cross_validate(toy_cache, [1, 2], out=str(tmp_path / "serial"), **kw)
    parallel = cross_validate(toy_cache, [1, 2], workers=2, out=str(tmp_path / "parallel"), **kw)
    for k in (1, 2):
        a = json.loads((tmp_path / f"serial/fold{k}/history.json").read_text())
        b = json.loads((tmp_path / f"parallel/fold{k}/history.json").read_text())
        np.testing.assert_allclose([h["train_loss"] for h in a], [h["train_loss"] for h in b], rtol=1e-4)
    assert parallel["reported"]["accuracy"]["n"] == 2
    assert parallel["reported"]["accuracy"]["mean"] == pytest.approx(
        serial["reported"]["accuracy"]["mean"], abs=0.07
    )


TABLE4 = [(1, 1), (3, 1), (5, 1), (7, 1), (3, 3), (5, 5), (7, 7)]  # the paper's flow window / stride


@pytest.mark.parametrize(("window", "stride"), TABLE4)
def test_every_table4_setting_trains_every_variant(tmp_path, window, stride):
    """Regression: window/stride other than 1/1 were refused by `pair_frames_with_flow`."""
    import torch

    from aver.cache import FeatureCache
    from aver.train.data import DataConfig, collate, load_clips
    from aver.train.models.variants import VARIANTS, build_model
    from aver.train.tasks import Task

    url = make_feature_cache(
        str(tmp_path / "t4.zarr"), n_clips=10, frames=(16, 24), flow_window=window, flow_stride=stride
    )
    cache = FeatureCache(url)
    clips = load_clips(cache, np.arange(10), DataConfig())
    for c in clips:
        assert len(c.frames) == len(c.flow) + 1  # each flow map has its end frame
    batch = collate(clips[:4])
    task = Task.from_cache(cache)
    for name in VARIANTS:
        model, _ = build_model(name, cache.dims, len(task.names), {f: v for f, v in TINY_MODEL.items()})
        loss = task.loss(model(batch), task.truth(batch))
        loss.backward()
        assert torch.isfinite(loss), name
    if (window, stride) == (3, 3):
        metrics = train_fold(_cfg(url, tmp_path / "run", epochs=1))
        assert metrics["fold"] == 1


def test_paper_additions_are_switchable(toy_cache, tmp_path):
    """Additions the paper does not mention can be turned off: standardisation, clipping; and the
    selection metric can be chosen."""
    from aver.errors import ConfigError

    cfg = make_config(
        "tiny",
        {
            "data.standardise": False,
            "grad_clip": 0,
            "metric": "uar",
            **{f"model.{k}": v for k, v in TINY_MODEL.items()},
        },
        cache=toy_cache,
        out=str(tmp_path / "run"),
        epochs=1,
    )
    metrics = train_fold(cfg)
    assert metrics["select_metric"] == "uar"
    with pytest.raises(ConfigError, match="ccc_mean"):
        train_fold(
            make_config("tiny", {"metric": "ccc_mean"}, cache=toy_cache, out=str(tmp_path / "x"), epochs=1)
        )
    assert not (tmp_path / "x").exists()


def test_soft_consensus_labels_train_and_are_recorded(tmp_path):
    """data.labels=soft trains on clips/soft_label with the soft cross-entropy; metrics stay on the
    hard labels; a cache without soft labels is refused before a run folder exists."""
    from aver.errors import ConfigError

    def cfg(cache, out, epochs=6):
        model = {f"model.{k}": v for k, v in TINY_MODEL.items()}
        return make_config("tiny", {**model, "data.labels": "soft"}, cache=cache, out=str(out), epochs=epochs)

    soft = make_feature_cache(str(tmp_path / "soft.zarr"), soft_labels=True)
    metrics = train_fold(cfg(soft, tmp_path / "run"))
    assert metrics["test_reported"]["accuracy"] > 0.6
    saved = json.loads((tmp_path / "run" / "checkpoint" / "checkpoint.json").read_text())
    assert saved["cache"]["label_source"] == "consensus argmax:aver.testing"
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["train_config"]["data"]["labels"] == "soft"
    )
    hard = make_feature_cache(str(tmp_path / "hard.zarr"), n_clips=20)
    with pytest.raises(ConfigError, match="holds no soft labels"):
        train_fold(cfg(hard, tmp_path / "x", epochs=1))
    assert not (tmp_path / "x").exists()


def test_report_lays_our_runs_beside_the_paper(tmp_path):
    from aver.train import cross_validate
    from aver.train.paper import write_report

    url = make_feature_cache(str(tmp_path / "cremad.zarr"), dataset="cremad")
    model = {f"model.{k}": v for k, v in TINY_MODEL.items()}
    cross_validate(
        url, [1, 2], preset="tiny", out=str(tmp_path / "runs/cremad/de3"), epochs=1, overrides=model
    )
    train_fold(
        url,
        1,
        preset="tiny",
        variant="none_ife",
        out=str(tmp_path / "runs/cremad/none_ife/fold1"),
        epochs=1,
        overrides=model,
    )
    t4 = make_feature_cache(
        str(tmp_path / "t4.zarr"), dataset="cremad", flow_window=3, flow_stride=1, frames=(8, 15)
    )
    train_fold(
        t4, 1, preset="tiny", out=str(tmp_path / "runs/cremad/de3_flow3x1/fold1"), epochs=1, overrides=model
    )
    path = write_report(tmp_path / "runs")
    text = path.read_text()
    assert (
        "| de3:de3, flow 3/1 | video | f1_macro |" in text
        and "| 76.1 | Table 4 (window 3, stride 1) |" in text
    )
    assert "Table 4 (window 5" not in text and "DINOv2" not in text  # rows of settings not run
    assert "Protocol: folds speaker-round-robin; labels file name." in text
    assert "## cremad" in text
    assert (
        "| de3:de3 | video | f1_macro |" in text and "| 79.5 | Table 1 |" in text
    )  # the paper's CREMA-D row
    assert "| de3:de3 | fusion | f1_macro |" in text and "Table 2 (IFE-Fusion)" in text
    assert "| de3:none_ife | video | f1_micro |" in text and "78.6 | Table 2 (None-IFE)" in text
    # a paper row no run is the counterpart of: its value, what differs and the flag that matches it
    assert "| de3:flow_only | video | f1_macro | not paired | 55.4 | Table 3 (IFE-V-O) |" in text
    assert "--variant flow_only" in text
    assert "(n=2)" in text and "±" in text
    assert "![cremad: aver beside the papers](report_cremad.png)" in text
    from PIL import Image

    with Image.open(tmp_path / "runs" / "report_cremad.png") as im:
        assert im.size[0] == 900 and im.size[1] > 600  # one pair of bars per paper row, readable
    page = path.with_suffix(".html").read_text()
    assert page.count("<table>") == 1 and "<th>system:variant</th>" in page and "Table 1" in page
    assert "src='data:image/png;base64," in page  # self-contained


def test_report_cli_on_an_empty_folder(tmp_path):
    from aver.cli import main

    assert main(["report", str(tmp_path)]) == 0
    assert "No runs found" in (tmp_path / "report.md").read_text()
    assert main(["report", str(tmp_path / "missing")]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_device_resident_training_matches_host_batches(toy_cache, tmp_path):
    """resident=true (features on the GPU, batches assembled there) trains as host-side batches do."""
    a = train_fold(_cfg(toy_cache, tmp_path / "a", device="cuda", amp=False, resident=True))
    b = train_fold(_cfg(toy_cache, tmp_path / "b", device="cuda", amp=False, resident=False))
    ha = json.loads((tmp_path / "a/history.json").read_text())
    hb = json.loads((tmp_path / "b/history.json").read_text())
    np.testing.assert_allclose([h["train_loss"] for h in ha], [h["train_loss"] for h in hb], rtol=1e-4)
    assert a["test_reported"]["accuracy"] == pytest.approx(b["test_reported"]["accuracy"], abs=0.05)
