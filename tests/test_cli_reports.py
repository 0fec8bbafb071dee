"""What a command must say at its end: the clips ``aver extract`` cut, and where ``aver evaluate``
wrote (never over the evaluation of another cache of the same name)."""

from __future__ import annotations

import json
import shutil

import pytest

from aver.cli import main
from aver.testing import build_feature_cache


@pytest.mark.slow
def test_extract_prints_the_clips_it_cut(small_corpus, tmp_path, capsys, monkeypatch):
    """Regression: a clip cut to the store's capacity was committed with only a note in the store
    (``aver info`` listed it, ``aver extract`` said nothing)."""
    import aver.extract.pipeline as pipeline
    from aver.store import Capacity

    monkeypatch.setattr(pipeline, "plan_capacity", lambda *a: Capacity(frames=10, audio=30))
    videos = sorted(small_corpus.rglob("*.mp4"))[:3]
    rows = ["video,speaker,label"] + [f"{v},s{k},a" for k, v in enumerate(videos)]
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    argv = ["extract", "--dataset", "folder", "--labels", str(tmp_path / "clips.csv"), "--preset", "tiny"]
    assert main([*argv, "--store", str(tmp_path / "cut.zarr"), "--limit", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "2 clips done with a note" in out, out
    noted = [line for line in out.splitlines() if line.startswith("  NOTE ")]
    assert len(noted) == 2 and all("cut at 10 frames" in line for line in noted), out
    assert {line.split()[1].rstrip(":") for line in noted} == {v.stem for v in videos[:2]}


def test_evaluations_of_two_caches_of_one_name_do_not_overwrite(tmp_path, capsys):
    """Regression: ``aver evaluate`` wrote every cache named ``toy.zarr`` into the same
    ``evaluations/toy.zarr/``, the second evaluation replacing the first, and said nowhere where."""
    first = build_feature_cache(str(tmp_path / "a" / "toy.zarr"), n_clips=15)
    shutil.copytree(first, tmp_path / "b" / "toy.zarr")
    run = tmp_path / "run"
    assert (
        main(["train", "--cache", first, "--preset", "tiny", "--epochs", "1", "--out", str(run), "-q"]) == 0
    )
    capsys.readouterr()
    wrote = {}
    for cache in (first, str(tmp_path / "b" / "toy.zarr"), first):
        assert main(["evaluate", "--run", str(run), "--cache", cache]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith("evaluation: "), line
        wrote.setdefault(cache, set()).add(line.split()[1])
    folders = sorted(p.name for p in (run / "evaluations").iterdir())
    assert len(folders) == 2 and folders[0] == "toy.zarr" and folders[1].startswith("toy.zarr-"), folders
    assert (
        all(len(w) == 1 for w in wrote.values()) and len(set().union(*wrote.values())) == 2
    )  # same cache: same folder
    for folder in folders:
        recorded = json.loads((run / "evaluations" / folder / "cache.json").read_text())["cache"]
        assert recorded in (
            str((tmp_path / "a" / "toy.zarr").resolve()),
            str((tmp_path / "b" / "toy.zarr").resolve()),
        )
        assert (run / "evaluations" / folder / "metrics.json").is_file()
