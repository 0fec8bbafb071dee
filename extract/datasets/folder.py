"""Any corpus described by a CSV: the way users bring their own data.

``--labels clips.csv`` with columns ``video`` (required), ``speaker`` (required), ``audio``
(optional separate audio file), ``id`` (optional; default: the video's stem), ``label``
(optional class name) and continuous targets named with ``--targets col1,col2``. Relative paths
are resolved against ``--data`` when given, else against the CSV's folder. Classes are the
sorted distinct ``label`` values. Folds: ``--folds`` (VAVL CSVs keyed by id) or round-robin
over speakers.
"""

from __future__ import annotations

import csv
from pathlib import Path

from aver.errors import ConfigError

from .base import DATASETS, ClipRecord, DatasetIndex, DatasetOptions, finish_index


def _resolve(base: Path, value: str) -> str:
    p = Path(value.strip()).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


@DATASETS.register("folder")
def folder(opts: DatasetOptions) -> DatasetIndex:
    if opts.labels is None:
        raise ConfigError("dataset 'folder' needs its clip table: --labels clips.csv (make: LABELS=...)")
    csv_path = Path(opts.labels).expanduser().resolve()
    if not csv_path.is_file():
        raise ConfigError(f"folder: clip table {csv_path} does not exist")
    base = Path(opts.data).expanduser().resolve() if opts.data else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        absent = [c for c in ("video", "speaker", *opts.targets) if c not in cols]
        if absent:
            raise ConfigError(f"{csv_path}: missing columns {absent}; columns are {cols}")
        rows = list(reader)
    has_label = "label" in cols
    classes = sorted({r["label"].strip() for r in rows if r["label"].strip()}) if has_label else []
    clips = []
    for line, r in enumerate(rows, start=2):
        try:
            targets = tuple(float(r[t]) for t in opts.targets)
        except ValueError as e:
            raise ConfigError(f"{csv_path}, line {line}: target value is not a number ({e})") from None
        label = r["label"].strip() if has_label else ""
        video = _resolve(base, r["video"])
        clips.append(
            ClipRecord(
                clip_id=(r.get("id") or "").strip() or Path(video).stem,
                video=video,
                speaker=r["speaker"].strip(),
                audio=_resolve(base, r["audio"]) if (r.get("audio") or "").strip() else None,
                label=classes.index(label) if label else -1,
                targets=targets,
            )
        )
    if not clips:
        raise ConfigError(f"{csv_path}: the clip table has no rows")
    return finish_index("folder", base, clips, opts, classes=classes, targets=list(opts.targets))
