"""aver predict (new videos through the run's own extraction) and cross-corpus evaluation."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from aver.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def run_dir(extracted_store, tmp_path_factory):
    """A tiny DE-III run on the real extracted synthetic store (6 clips, 3 speakers)."""
    from aver.train import train_fold
    from aver.train.config import make_config

    out = tmp_path_factory.mktemp("predict") / "run"
    train_fold(make_config("tiny", cache=extracted_store, out=str(out), epochs=2, progress=False))
    return out


@pytest.fixture(scope="module")
def other_face(tmp_path_factory):
    from aver.extract.synthetic import write_photo_clip

    return write_photo_clip(tmp_path_factory.mktemp("video") / "grace.mp4", seconds=1.2)


def _video(store: str, clip: str) -> str:
    from aver.cache import FeatureCache
    from aver.layout import VIDEO

    cache = FeatureCache(store)
    return str(cache.array(VIDEO)[list(cache.ids).index(clip)])


@pytest.mark.slow
def test_predict_scores_a_new_face_and_agrees_with_the_run(
    run_dir, other_face, extracted_store, small_corpus
):
    from aver import predict

    run_rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    clip = run_rows[0]["clip_id"]
    rows = predict(run_dir, [other_face, small_corpus / _video(extracted_store, clip)], out=run_dir / "p.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    names = json.loads((run_dir / "config.json").read_text())["names"]
    for r in rows:
        for head in ("video", "audio", "fusion"):
            assert sum(r[f"{head}_{n}"] for n in names) == pytest.approx(1.0, abs=1e-5)
    mine = next(r for r in rows if r["clip"] == clip)
    assert mine["prediction"] == run_rows[0]["prediction"]
    for key, value in run_rows[0].items():
        if key.startswith(("video_", "audio_", "fusion_")):
            assert mine[key] == pytest.approx(float(value), abs=2e-5), key
    table = list(csv.DictReader(open(run_dir / "p.csv")))
    assert len(table) == 2 and table[0]["file"].endswith("grace.mp4")


@pytest.mark.slow
def test_predict_cli_bad_files_and_exit_codes(run_dir, other_face, tmp_path, capsys):
    from aver.cli import main

    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    assert main(["predict", str(run_dir), str(bad), "-q"]) == 1  # every file failed
    out = capsys.readouterr().out
    assert out.count("FAILED") == 1 and "broken.mp4" in out and "Traceback" not in out
    assert (
        main(["predict", str(run_dir), str(bad), str(other_face), "-q", "--out", str(tmp_path / "t.json")])
        == 0
    )
    rows = json.loads((tmp_path / "t.json").read_text())
    assert {r["status"] for r in rows} == {"ok", "failed"}


@pytest.mark.slow
def test_predict_prints_hostile_file_names_inert(run_dir, other_face, tmp_path, capsys):
    """Regression: a video's name reached the terminal raw (an OSC 8 link, a screen clear, a bidi
    override), in the FAILED line and in the scored line; the table's cells stay inert too."""
    from test_fuzz import assert_csv_inert, assert_inert

    from aver.cli import main

    bad = tmp_path / "\x1b]8;;https:evil\x07click\x1b]8;;\x07.mp4"
    bad.write_text("not a video")
    good = tmp_path / '=HYPERLINK("x")\x1b[2J\u202eevil.mp4'
    shutil.copy(other_face, good)
    table = tmp_path / "t.csv"
    assert main(["predict", str(run_dir), str(bad), str(good), "-q", "--out", str(table)]) == 0
    out = capsys.readouterr().out
    assert out.count("FAILED") == 1 and "\\x1b]8;;https:evil" in out and "=HYPERLINK" in out, out
    assert_inert(out, "predict")
    assert_csv_inert(table)


@pytest.mark.slow
def test_predict_refuses_other_weights(run_dir, other_face, tmp_path):
    from safetensors.torch import load_file, save_file

    from aver.apps.prediction import predict
    from aver.train.inference import load_run, recorded_extraction

    weights = recorded_extraction(load_run(run_dir))["config"]["image"]["weights"]
    state = load_file(weights)
    key = next(iter(state))
    state[key] = state[key] + 0.01
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    with pytest.raises(ConfigError, match="image: the run's cache used sha256"):
        predict(run_dir, [other_face], weights={"image.weights": str(other)})


@pytest.mark.slow
def test_timeline_scores_windows_and_plots(run_dir, other_face, tmp_path):
    from aver import predict

    rows = predict(run_dir, [other_face], timeline=True, window_s=0.6, hop_s=0.2, out=tmp_path / "tl.csv")
    assert len(rows) >= 3 and all(r["status"] == "ok" for r in rows)
    assert rows[0]["start_s"] == 0.0 and rows[1]["start_s"] == pytest.approx(0.2)
    assert rows[-1]["end_s"] == pytest.approx(1.2, abs=0.05)  # the last window ends at the clip's end
    assert (tmp_path / "tl_grace.png").stat().st_size > 5000


def _other_corpus(store: str, path, classes: list[str], relabel: dict[int, int]) -> str:
    import zarr

    from aver import layout as L

    shutil.copytree(store, path)
    g = zarr.open_group(str(path), mode="r+")
    meta = dict(g.attrs[L.ATTRS_KEY])
    g.attrs[L.ATTRS_KEY] = {**meta, "dataset": "othercorpus", "classes": classes}
    labels = g[L.LABEL][:]
    for i, c in relabel.items():
        labels[i] = c
    g[L.LABEL][:] = labels
    from aver.testing import reseal

    return reseal(str(path))  # a corpus of its own: its table as edited is its truth


@pytest.mark.slow
def test_cross_corpus_evaluation_maps_classes(run_dir, extracted_store, tmp_path):
    from aver.train import evaluate_run

    other = _other_corpus(extracted_store, tmp_path / "other.zarr", ["neu", "Happiness", "surprise"], {0: 2})
    m = evaluate_run(run_dir, other)
    assert m["cross_corpus"] and m["shared_classes"] == ["neutral", "happy"]
    assert m["missing_classes"] == ["surprise"] and m["clips_left_out"] == 1 and m["clips"] == 5
    assert 0.0 <= m["test_reported"]["accuracy"] <= 1.0
    out = run_dir / "evaluations" / "other.zarr"
    assert (out / "predictions.csv").exists() and json.loads((out / "metrics.json").read_text())[
        "cross_corpus"
    ]


@pytest.mark.slow
def test_cross_corpus_refuses_other_extractors(run_dir, extracted_store, tmp_path):
    import zarr

    from aver import layout as L
    from aver.train import evaluate_run

    other = _other_corpus(extracted_store, tmp_path / "o.zarr", ["neutral", "happy"], {})
    g = zarr.open_group(other, mode="r+")
    meta = dict(g.attrs[L.ATTRS_KEY])
    meta["models"] = {**meta["models"], "image": {**meta["models"]["image"], "weights_sha256": "0" * 64}}
    g.attrs[L.ATTRS_KEY] = meta
    with pytest.raises(CheckpointError, match="image weights sha256"):
        evaluate_run(run_dir, other)
