"""``aver predict``: a trained run on new videos, with the extraction its cache was made with.

The run records how its cache was made (``config.json`` → ``extraction``: the extraction config, the
models with the sha256 of their weights, the end-to-end inputs). New videos are extracted with
exactly that configuration into a temporary store: the weights found now are hashed and compared
with the recorded ones first, and a difference is refused by name. Then the run's own checkpoint
(and training-split standardisation) scores every clip (``aver.train.inference``): per head, the
class probabilities (or the continuous values). A file that cannot be used (not a video, no face,
no audio) gets one line with its cause; the others are still scored. With ``timeline`` a long video
is scored over sliding windows (CSV + a PNG and an SVG of each class's probability over time, on
a fixed 0-1 axis; continuous values on an axis scaled to them).

This joins both stages (``aver.extract`` to make the features, ``aver.train`` to score them), so it
lives in ``aver.apps``, above the kernel; the stages still never import each other.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aver.errors import ConfigError, UserError
from aver.train.inference import (
    LoadedRun,
    load_run,
    plot_timeline,
    recorded_extraction,
    score_clips,
    score_windows,
    write_rows,
)

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".flv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def extraction_config(
    run: LoadedRun, device: str, weights: dict[str, str] | None = None, all_crops: bool = False
):
    """The ``ExtractConfig`` the run's cache was made with, on ``device``; ``weights`` points the
    model files somewhere else (``image.weights``, ``audio.model``, ``flow.weights``): the sha256
    check decides whether they are the same weights."""
    import dataclasses

    from aver.extract.config import ExtractConfig, InputsConfig
    from aver.overrides import apply_overrides

    ex = recorded_extraction(run)
    d = json.loads(json.dumps(ex["config"]))
    # computed as the cache was: its stored precision (none stored: float32) sets amp and tf32
    d["runtime"] = {"device": device, "amp": False, "tf32": False}
    cfg = apply_overrides(
        ExtractConfig.from_dict(d), [f"{k}={json.dumps(v)}" for k, v in (weights or {}).items()]
    )
    inputs = ex.get("inputs") or {}
    if run.spec is not None:
        crops = int(inputs.get("crop_frames", 0)) if not all_crops else 0
        size = int(inputs.get("crop_size") or run.spec.image_size)
        cfg = dataclasses.replace(cfg, inputs=InputsConfig(True, crops, size, True))
    return cfg


def check_weights(run: LoadedRun, cfg, models) -> None:
    """Refuse extraction models that are not the ones the run's cache was made with (sha256)."""
    from aver.extract.models import cache_hash

    ex = recorded_extraction(run)
    now = models.provenance(cfg)
    diffs = []
    for key in ("image", "audio", "flow"):
        was = ((ex.get("models") or {}).get(key) or {}).get("weights_sha256")
        got = (now.get(key) or {}).get("weights_sha256")
        if was != got:
            where = (now.get(key) or {}).get("weights") or (now.get(key) or {}).get("model") or "?"
            diffs.append(f"{key}: the run's cache used sha256 {str(was)[:12]}, {where} has {str(got)[:12]}")
    if not diffs and ex.get("config_hash") and cache_hash(cfg, now) != ex["config_hash"]:
        diffs.append(f"extraction config hash {ex['config_hash']} vs {cache_hash(cfg, now)}")
    if diffs:
        raise ConfigError(
            f"{run.dir} was trained on features of other models: {'; '.join(diffs)}. Give the original "
            "weights (--face-weights, --audio-model, --flow-weights)"
        )


def collect_videos(paths: list[str | Path]) -> tuple[list[Path], dict[str, str]]:
    """Video files from files and folders (recursively, by suffix), and ``{path: cause}`` for
    arguments that are neither."""
    files, bad = [], {}
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                bad[str(p)] = f"no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder"
            files += found
        elif p.is_file():
            files.append(p)
        else:
            bad[str(p)] = "no such file or folder"
    return files, bad


def _index(files: list[Path], run: LoadedRun):
    """An ad-hoc corpus of ``files`` (ids made unique), labelled with the run's classes."""
    from aver.extract.datasets.base import ClipRecord, DatasetIndex

    ids: dict[str, int] = {}
    clips = []
    for f in files:
        stem = f.stem
        ids[stem] = ids.get(stem, 0) + 1
        cid = stem if ids[stem] == 1 else f"{stem}~{ids[stem]}"
        clips.append(ClipRecord(cid, str(f.resolve()), "unknown"))
    classes = run.names if run.classification else []
    return DatasetIndex("predict", "/", clips, classes=classes, folds_source="none (prediction)")


def predict(
    run_dir: str | Path,
    paths: list[str | Path],
    *,
    device: str = "cpu",
    out: str | Path | None = None,
    timeline: bool = False,
    window_s: float = 4.0,
    hop_s: float = 1.0,
    weights: dict[str, str] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Score every video of ``paths`` with the run at ``run_dir``; one row per file (per window with
    ``timeline``): ``file``, ``clip``, ``status`` (ok / failed), ``error``, ``head``, ``prediction``
    and ``<head>_<class>`` probabilities (or ``<head>_<target>`` values). Written to ``out`` (.csv or
    .json) when given; with ``timeline`` also ``<out stem>_<clip>.png`` and its ``.svg``."""
    if timeline and (window_s <= 0 or hop_s <= 0):
        raise UserError("--window and --hop must be > 0 seconds")
    run = load_run(run_dir, device)
    files, bad = collect_videos(paths)
    rows = [_failed(p, cause) for p, cause in bad.items()]
    if files:
        with tempfile.TemporaryDirectory(prefix="aver-predict-") as tmp:
            rows += _extract_and_score(
                run,
                files,
                Path(tmp) / "predict.zarr",
                device,
                weights,
                progress,
                (window_s, hop_s) if timeline else None,
                out,
            )
    if out:
        write_rows(rows, Path(out))
    return rows


def _extract_and_score(run, files, url, device, weights, progress, windows, out) -> list[dict[str, Any]]:
    from aver.cache import FeatureCache
    from aver.extract.models import Models
    from aver.extract.pipeline import run_extraction

    cfg = extraction_config(run, device, weights, all_crops=windows is not None)
    models = Models.build(cfg.resolved())
    check_weights(run, cfg, models)
    index = _index(files, run)
    summary = run_extraction(cfg, index, str(url), progress=progress, models=models)
    cache = FeatureCache(str(url))
    rows = []
    for rec in index.clips:
        if rec.clip_id in summary.failures:
            rows.append(_failed(rec.video, summary.failures[rec.clip_id], rec.clip_id))
    done = np.flatnonzero(cache.status == 1)
    if windows is None:
        rows += score_clips(run, cache, done, {c.clip_id: c.video for c in index.clips})
    else:
        for i in done:
            clip_rows = score_windows(run, cache, int(i), *windows, index.clips[int(i)].video)
            rows += clip_rows
            if out:
                plot_timeline(clip_rows, run, Path(out).with_name(f"{Path(out).stem}_{cache.ids[i]}.png"))
    return rows


def _failed(path, cause: str, clip: str = "") -> dict[str, Any]:
    return {"file": str(path), "clip": clip, "status": "failed", "error": str(cause)}
