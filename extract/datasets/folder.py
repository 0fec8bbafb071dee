"""Any corpus described by a CSV: the way users bring their own data.

``--labels clips.csv`` with columns ``video`` (required), ``speaker`` (required), ``audio``
(optional separate audio file), ``id`` (optional; default: the video's stem), ``label``
(optional class name) and continuous targets named with ``--targets col1,col2``. Relative paths
are resolved against ``--data`` when given, else against the CSV's folder. Classes are the
sorted distinct ``label`` values. Folds: ``--fold-files`` (VAVL CSVs keyed by id) or round-robin
over speakers.
"""

from __future__ import annotations

from pathlib import Path

from aver.errors import ConfigError

from .base import (
    DATASETS,
    ClipRecord,
    DatasetIndex,
    DatasetOptions,
    check_options,
    finish_index,
    read_csv,
    row_targets,
)


def _resolve(base: Path, value: str) -> str:
    p = Path(value.strip()).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


@DATASETS.register("folder")
def folder(opts: DatasetOptions) -> DatasetIndex:
    check_options(opts, "folder")
    if opts.labels is None:
        raise ConfigError("dataset 'folder'' needs its clip table: --labels clips.csv (make: LABELS=...)")
    csv_path = Path(opts.labels).expanduser().resolve()
    base = Path(opts.data).expanduser().resolve() if opts.data else csv_path.parent
    cols, numbered = read_csv(csv_path, ["video", "speaker", *opts.targets], "folder: clip table")
    rows = [r for _, r in numbered]
    has_label = "label" in cols
    classes = sorted({(r.get("label") or "").strip() for r in rows} - {""}) if has_label else []
    clips = []
    for line, r in numbered:
        targets = row_targets(r, list(opts.targets), csv_path, line)
        label = (r.get("label") or "").strip()
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
    ids = [c.clip_id for c in clips]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(
            f"{csv_path}: clip ids must be unique (the id column, else the video's stem); duplicated: {dup}"
        )
    return finish_index(
        "folder", base, clips, opts, classes=classes, targets=list(opts.targets), label_source="clip table"
    )
