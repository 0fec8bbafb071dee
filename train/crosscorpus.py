"""Cross-corpus evaluation: a run scored on a cache of another dataset made with the same extractors.

``aver evaluate --run R --cache OTHER`` lands here when OTHER is not the run's own cache. It is
accepted when the features (or inputs) were made the same way: the same extraction models (sha256
of their weights), the same extraction settings apart from the dataset and the weight locations,
the same feature sizes. Classes are matched by emotion name (``angry`` = ``anger`` = ``ang``,
``fearful`` = ``fear``, ...); clips of classes the run does not know are left out and named, and the
model's prediction is its most probable class among the shared ones. Every committed, labelled clip
of OTHER is scored (no folds: another corpus is all test data).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from aver.cache import FeatureCache
from aver.errors import CheckpointError

log = logging.getLogger("aver.train")

SYNONYMS = {
    "anger": "angry", "ang": "angry", "disgusted": "disgust", "dis": "disgust", "fear": "fearful",
    "fea": "fearful", "happiness": "happy", "hap": "happy", "joy": "happy", "neu": "neutral",
    "sadness": "sad", "sad": "sad", "surprise": "surprised", "sur": "surprised", "calmness": "calm",
}  # fmt: skip
SETTINGS = (
    "face",
    "flow",
    "image",
    "audio",
    "max_seconds",
    "min_audio_ratio",
)  # config parts that make features
LOCATIONS = {"image": "weights", "audio": "model", "flow": "weights"}  # compared by sha256 instead


def canonical(name: str) -> str:
    key = str(name).strip().lower()
    return SYNONYMS.get(key, key)


def extraction_differences(recorded: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """How ``meta`` (another cache's attributes) was extracted differently from ``recorded``."""
    diffs = []
    for key in ("image", "audio", "flow"):
        a = ((recorded.get("models") or {}).get(key) or {}).get("weights_sha256")
        b = ((meta.get("models") or {}).get(key) or {}).get("weights_sha256")
        if a != b:
            diffs.append(f"{key} weights sha256 {str(a)[:12]} vs {str(b)[:12]}")
    if recorded.get("dims") != meta.get("dims"):
        diffs.append(f"dims {recorded.get('dims')} vs {meta.get('dims')}")
    ca, cb = recorded.get("config") or {}, meta.get("config") or {}
    for part in SETTINGS:
        a, b = ca.get(part), cb.get(part)
        if isinstance(a, dict) and isinstance(b, dict):
            a, b = ({k: v for k, v in d.items() if k != LOCATIONS.get(part)} for d in (a, b))
        if a != b:
            diffs.append(f"config.{part} differs")
    return diffs


def class_map(run_names: list[str], cache_names: list[str]) -> tuple[dict[int, int], list[str]]:
    """Cache class index -> run class index for shared emotions; and the cache classes without one."""
    index = {canonical(n): k for k, n in enumerate(run_names)}
    mapping = {c: index[canonical(n)] for c, n in enumerate(cache_names) if canonical(n) in index}
    return mapping, [n for c, n in enumerate(cache_names) if c not in mapping]


def evaluate_cross_corpus(
    run_dir: Path, cache: FeatureCache, info: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Score the run on every labelled clip of ``cache`` whose class it knows; write ``metrics.json``
    and ``predictions.csv`` into ``out``; return the metrics."""
    from .inference import load_run, recorded_extraction

    run = load_run(run_dir, (info.get("train_config") or {}).get("device", "cpu"))
    if not run.classification or not cache.classes:
        raise CheckpointError(
            "cross-corpus evaluation needs classes on both sides (a classification run and cache)"
        )
    why = extraction_differences(recorded_extraction(run), cache.meta)
    if why:
        raise CheckpointError(
            f"cannot evaluate {run_dir} on {cache.url}: its features were made differently ({'; '.join(why)}); "
            "extract it with the run's extraction settings and models"
        )
    mapping, missing = class_map(run.names, cache.classes)
    if not mapping:
        raise CheckpointError(f"{cache.url} shares no class with the run ({cache.classes} vs {run.names})")
    cache.require_intact()  # the clip table and every clip: the whole corpus is scored
    rows = np.flatnonzero((cache.status == 1) & np.isin(cache.labels, list(mapping)))
    left_out = int(((cache.status == 1) & (cache.labels >= 0)).sum()) - len(rows)
    return _score(run, cache, rows, mapping, missing, left_out, out)


def _score(run, cache, rows, mapping, missing, left_out, out: Path) -> dict[str, Any]:
    from .inference import clips_for, forward
    from .metrics import classification_metrics

    values = forward(run, clips_for(run, cache, rows), str(next(run.model.parameters()).device))
    shared = sorted(set(mapping.values()))
    names = [run.names[k] for k in shared]
    truth = np.array([shared.index(mapping[int(cache.labels[i])]) for i in rows])
    metrics: dict[str, Any] = {}
    for head, p in values.items():
        pred = p[:, shared].argmax(1)
        metrics[head] = classification_metrics(truth, pred, len(shared), names)
    metrics.update(
        cross_corpus=True,
        cache=cache.url,
        dataset=cache.meta.get("dataset"),
        clips=len(rows),
        shared_classes=names,
        missing_classes=missing,
        clips_left_out=left_out,
        reported_head=run.head if run.head in values else next(iter(values)),
        prediction="most probable of the shared classes",
    )
    metrics["test_reported"] = metrics[metrics["reported_head"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    from .inference import write_rows

    head = metrics["reported_head"]
    table = [
        {"clip_id": str(cache.ids[i]), "label": cache.classes[int(cache.labels[i])],
         "prediction": names[int(values[head][k][shared].argmax())],
         **{f"{h}_{n}": float(v[k][j]) for h, v in values.items() for j, n in enumerate(run.names)}}
        for k, i in enumerate(rows)
    ]  # fmt: skip
    write_rows(table, out / "predictions.csv")
    log.info(
        "cross-corpus: %d clips of %s; classes not in the run: %s", len(rows), cache.url, missing or "none"
    )
    return metrics
