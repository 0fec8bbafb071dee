"""Output polish (issue 20): plots leave a notebook's matplotlib alone and come with SVG copies, the
timeline's probability axis is fixed, TensorBoard logs lr / hparams / test metrics, cv_summary.md is
compact, QA states no lower limit a measure cannot reach, and the slow default preset is announced."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aver.testing import build_feature_cache

TINY_MODEL = {"model.d_model": 16, "model.d_hidden": 24, "model.n_heads": 2, "model.head_hidden": 16}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return build_feature_cache(str(tmp_path_factory.mktemp("polish") / "toy.zarr"), n_clips=30)


def _svg_ok(path: Path) -> None:
    assert path.is_file(), path
    assert ET.parse(path).getroot().tag.endswith("svg"), path  # a whole, parseable SVG document


# -- 1 + 2: no global matplotlib state; every figure also as SVG ------------------------------------
def test_training_and_every_plot_leave_the_backend_and_rcparams_alone(toy, tmp_path):
    """In a fresh process set up like a notebook (a non-Agg backend, mathtext on, a style of its
    own), a tiny ``aver.train_fold`` and every other figure leave all three as they were and never
    import pyplot; every PNG has its SVG beside it. (The old code switched the backend to Agg and
    turned ``text.parse_math`` off for the whole process.)"""
    script = textwrap.dedent(
        f"""
        import json, sys
        import matplotlib
        matplotlib.use("svg")
        matplotlib.rcParams["text.parse_math"] = True
        matplotlib.rcParams["lines.linewidth"] = 7.0
        import aver
        from types import SimpleNamespace
        from aver.train.inference import plot_timeline
        from aver.train.plots import plot_comparison, plot_forest
        out = sys.argv[1]
        aver.train_fold({toy!r}, preset="tiny", epochs=2, out=out + "/run", overrides={TINY_MODEL!r},
                        progress=False)
        plot_comparison([("de3 $x$", 70.0, 1.5, 72.0)], out + "/report_toy.png", "toy")
        plot_forest([dict(label="a", diff=1.0, ci_low=0.5, ci_high=1.5, verdict="higher")],
                    out + "/sweep_forest.png")
        rows = [dict(status="ok", head="fusion", clip="c", start_s=s, end_s=s + 1.0, fusion_a=0.3,
                     fusion_b=0.7) for s in (0.0, 0.5, 1.0)]
        plot_timeline(rows, SimpleNamespace(names=["a", "b"], classification=True), __import__(
            "pathlib").Path(out + "/tl_c.png"))
        print(json.dumps([matplotlib.rcParams._get("backend"), matplotlib.rcParams["text.parse_math"],
                          matplotlib.rcParams["lines.linewidth"], "matplotlib.pyplot" in sys.modules]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["svg", True, 7.0, False]
    run = tmp_path / "run"
    pngs = [run / "confusion.png", run / "learning_curves.png", run / "attention.png"]
    pngs += [tmp_path / n for n in ("report_toy.png", "sweep_forest.png", "tl_c.png")]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png  # the PNG names are unchanged
        _svg_ok(png.with_suffix(".svg"))


def test_labels_are_drawn_as_written_and_svgs_are_reproducible(tmp_path):
    """``for_plot``'s escaped ``\\$`` is drawn as ``$`` (mathtext is off, it would show a backslash),
    a raw ``$x$`` is drawn as it is, and the same figure gives the same SVG bytes (no date, fixed ids)."""
    from aver.train.plots import plot_confusion, vector_path
    from aver.utils import for_plot

    names = [for_plot("cost $5"), "$x_1$"]
    a = plot_confusion(np.eye(2), names, tmp_path / "a.png", title=for_plot("t $"))
    b = plot_confusion(np.eye(2), names, tmp_path / "b.png", title=for_plot("t $"))
    svg = vector_path(a).read_text()
    assert vector_path(a) == tmp_path / "a.svg"
    # the SVG backend writes each text as a comment before its glyphs
    assert "<!-- cost $5 -->" in svg and "<!-- $x_1$ -->" in svg and "<!-- t $ -->" in svg
    assert "\\$" not in svg
    assert vector_path(a).read_bytes() == vector_path(b).read_bytes()


# -- 5: the timeline's axis ----------------------------------------------------------------------
@pytest.mark.parametrize("classification", [True, False])
def test_timeline_axis_is_0_to_1_for_probabilities_only(tmp_path, monkeypatch, classification):
    from aver.train import plots
    from aver.train.inference import plot_timeline

    seen, save = [], plots._save

    def spy(fig, path):
        seen.append(fig.axes[0].get_ylim())
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    rows = [
        {
            "status": "ok",
            "head": "video",
            "clip": "c",
            "start_s": s,
            "end_s": s + 1.0,
            "video_a": v,
            "video_b": 0.5,
        }
        for s, v in ((0.0, 0.30), (0.5, 0.40), (1.0, 0.45))
    ]
    rows.append({"status": "failed", "clip": "c"})  # not drawn
    run = SimpleNamespace(names=["a", "b"], classification=classification)
    plot_timeline(rows, run, tmp_path / "tl.png")
    (lo, hi),  = seen  # fmt: skip
    if classification:
        assert (lo, hi) == (0.0, 1.0)
    else:
        assert 0.2 < lo < 0.3 and 0.5 < hi < 0.6  # scaled to the values 0.30 ... 0.50
    _svg_ok(tmp_path / "tl.svg")
    plot_timeline([{"status": "failed"}], run, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_plot_timeline_refuses_ragged_series(tmp_path):
    from aver.train.plots import plot_timeline

    with pytest.raises(ValueError, match="3 values"):
        plot_timeline([0, 1, 2], [("a", [0.1, 0.2])], tmp_path / "x.png", "p")


# -- 3: TensorBoard -----------------------------------------------------------------------------
METRICS = {
    "reported_head": "fusion",
    "test": {
        "loss": 0.9,
        "video": {
            "n": 8,
            "accuracy": 0.5,
            "f1_macro": 0.4,
            "recall": {"happy": 0.25},
            "confusion_matrix": [[1]],
        },
        "fusion": {
            "n": 8,
            "accuracy": 0.75,
            "f1_macro": 0.7,
            "recall": {"happy": 0.5},
            "class_names": ["happy"],
        },
    },
}
CONFIG = {
    "lr": 0.001,
    "seed": 3,
    "augment": None,
    "cache": "c.zarr",
    "out": "runs/x",
    "storage_options": {"key": "secret"},
    "data": {"batch_size": 8, "inputs_in_memory": None, "labels": "hard"},
}


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder / "tensorboard")).Reload()


def test_tensorboard_logs_lr_named_metric_test_metrics_and_hparams(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from aver.train.epochlog import EpochLog, log_results

    history = [
        {"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3 / e, "val_loss": 2.0, "val_metric": 0.1 * e, "val_head": "fusion",
         "val_fusion": 0.1 * e, "data_s": 0.5, "clips": 8}
        for e in (1, 2)
    ]  # fmt: skip
    log = EpochLog(tmp_path, history[:1], metric="f1_macro")
    log.history.append(history[1])
    log.add(history[1])
    log.close()
    log_results(tmp_path, CONFIG, METRICS, step=2)
    events = _events(tmp_path)
    scalars = set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("train/lr")] == [
        (1, pytest.approx(1e-3)),
        (2, pytest.approx(5e-4)),
    ]
    # the selected metric under its name, and under the old tag that scripts read
    for name in ("validation/f1_macro", "validation/metric"):
        assert [e.value for e in events.Scalars(name)] == pytest.approx([0.1, 0.2])
    assert {"loss/train", "validation/fusion", "time/data_s"} <= scalars and "validation/clips" not in scalars
    expected = {"test/loss": 0.9, "test/f1_macro": 0.7, "test/accuracy": 0.75, "test/recall_happy": 0.5,
                "test/video/f1_macro": 0.4, "test/fusion/recall_happy": 0.5}  # fmt: skip
    for name, value in expected.items():
        assert [(e.step, e.value) for e in events.Scalars(name)] == [(2, pytest.approx(value))], name
    assert "test/n" not in scalars and not any("confusion" in t for t in scalars)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == pytest.approx(0.001) and hp["data.batch_size"].number_value == 8
    assert hp["cache"].string_value == "c.zarr" and hp["augment"].string_value == "null"
    assert not {"out", "storage_options", "data.inputs_in_memory"} & set(hp)  # not hyper-parameters
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"test/loss", "test/accuracy", "test/f1_macro"}
    # a (re)start rewrites the log from the history: the results are not kept twice
    EpochLog(tmp_path, history, metric="f1_macro").close()
    log_results(tmp_path, CONFIG, METRICS, step=2)
    assert len(_events(tmp_path).Scalars("test/f1_macro")) == 1
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_without_a_metric_name_or_lr_the_old_tags_stay(tmp_path):
    from aver.train.epochlog import EpochLog, tag

    assert tag("lr") == "train/lr" and tag("val_metric") == "validation/metric" and tag("clips") is None
    EpochLog(tmp_path, [{"epoch": 1, "train_loss": 1.0, "val_metric": 0.5}]).close()
    assert set(_events(tmp_path).Tags()["scalars"]) == {"loss/train", "validation/metric"}


# -- 4: cv_summary.md ----------------------------------------------------------------------------
def _summary(names: list[str], n: int) -> dict:
    from aver.train.api import summarise_folds

    rng = np.random.default_rng(0)
    runs = {}
    for k in range(n):
        head = {name: float(rng.uniform()) for name in names} | {"n": 10, "recall": {"a|b": 0.5}}
        runs[f"fold{k + 1}"] = {"video": head, "reported": dict(head), "loss": 1.0}
    parts = ("video", "reported")
    return runs, {p: summarise_folds({r: v[p] for r, v in runs.items()}) for p in parts}


def test_cv_summary_md_is_one_compact_table_and_the_csv_keeps_every_metric(tmp_path):
    from aver.train.api import write_cv_summary

    names = ["accuracy", "f1_macro", "f1_micro", "uar", "precision_macro", "recall_macro"]
    runs, summary = _summary(names, 3)
    write_cv_summary(tmp_path, runs, summary)
    md = (tmp_path / "cv_summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == "| head | accuracy | f1_macro | f1_micro | uar |"
    assert [line.split(" | ")[0] for line in table[2:]] == ["| reported", "| video"]  # reported first
    v = summary["reported"]["f1_macro"]
    assert f"| {v['mean']:.4f} ± {v['std']:.4f} (3) |" in table[2]
    assert "precision_macro" not in md and "cv_summary.csv" in md
    csv_rows = (tmp_path / "cv_summary.csv").read_text().splitlines()
    assert csv_rows[0] == "head,metric,mean,std,n" and len(csv_rows) == 1 + 2 * (len(names) + 1)  # + recall
    saved = json.loads((tmp_path / "cv_summary.json").read_text())
    assert saved["summary"] == summary and saved["runs"] == runs


def test_cv_summary_md_for_continuous_targets_and_one_run(tmp_path):
    from aver.train.api import write_cv_summary

    runs, summary = _summary(["ccc_mean", "ccc_a|x", "ccc_valence", "mae_mean"], 1)
    write_cv_summary(tmp_path, runs, summary)
    table = [line for line in (tmp_path / "cv_summary.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == "| head | ccc_mean | ccc_a\\|x | ccc_valence |"  # a target's | cannot end the cell
    mean = summary["reported"]["ccc_mean"]["mean"]
    assert table[2].startswith(f"| reported | {mean:.4f} (1) |") and "±" not in table[2]


# -- 6: QA outlier limits ------------------------------------------------------------------------
def test_a_negative_lower_limit_of_a_magnitude_is_neither_used_nor_stated(tmp_path):
    from aver.qa import BY_KEY, MEASURES, ROBUST_Z, Page, QAResult, _rule, flag_outliers, robust_bounds

    x = np.array([0.5, 1.0, 2.0, 3.0, 6.0, 8.0, 9.0])  # median 3, MAD 2.5: the robust rule gives 3 - 13 < 0
    med, scale = 3.0, 1.4826 * 2.5
    assert med - ROBUST_Z * scale < 0
    lo, hi = robust_bounds(x, BY_KEY["flow_mean"])
    assert lo == -np.inf and hi == pytest.approx(med + ROBUST_Z * scale)
    # a positive lower limit of a non-negative measure is kept, and a signed measure keeps its negative one
    probs = np.array([0.95, 0.96, 0.97, 0.98, 0.99, 0.97])
    assert 0 < robust_bounds(probs, BY_KEY["face_prob"])[0] < 0.95
    assert robust_bounds(np.zeros(10), BY_KEY["av_delta"])[0] == pytest.approx(-0.175)
    assert BY_KEY["av_delta"].least is None and all(m.least == 0 for m in MEASURES if m.key != "av_delta")
    n = len(x)
    values = {m.key: np.full(n, np.nan) for m in MEASURES} | {"flow_mean": x}
    result = QAResult("c.zarr", {}, np.array([f"c{i}" for i in range(n)]), np.ones(n), np.full(n, 10), values)
    flag_outliers(result)
    assert result.flags == {}
    page = Page(tmp_path)
    _rule(page, result)
    row = next(p for p in page.parts if "flow mean %" in p)
    assert "<td>-" not in row and "<td>–</td><td>16" in row  # flag below: none; flag above: 16
    assert "least possible value" in "".join(page.parts)


# -- 7: the paper preset on the CPU says so ------------------------------------------------------
def test_paper_preset_on_the_cpu_warns_once_before_training(toy, tmp_path, monkeypatch, caplog):
    import aver
    from aver.train import api

    trained = []
    monkeypatch.setattr(api, "_train_fold", lambda cfg: trained.append((cfg, list(caplog.records))) or {})
    with caplog.at_level(logging.INFO, logger="aver.train"):
        aver.train_fold(toy, out=str(tmp_path / "p"))
        aver.train_fold(toy, preset="tiny", out=str(tmp_path / "t"))
    (paper, before), (tiny, _) = trained
    assert paper.preset == "paper" and tiny.preset == "tiny"
    warnings = [r for r in caplog.records if r.name == "aver.train" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0] in before  # said before training started
    assert 'preset="tiny"' in warnings[0].getMessage() and "CPU" in warnings[0].getMessage()
