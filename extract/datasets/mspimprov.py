"""MSP-IMPROV: continuous activation / valence / dominance from a VAVL-format labels CSV.

``--labels`` is a VAVL file such as ``labels_consensus_1.csv`` with columns
``FileName,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set`` (attributes on a 1-5 scale, stored
as given). Media are found anywhere under ``--data`` by file stem: a video (``.avi``/``.mp4``)
and, when present, a ``.wav`` of the same name (else the video's own audio). The speaker is
``SpkrID`` (the session in the VAVL files). Default folds: the labels CSV pattern given with
``--fold-files`` (e.g. ``labels_consensus_{fold}.csv``); without it, speakers dealt round-robin.
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
    require_dir,
    row_targets,
)

TARGET_COLUMNS = {"arousal": "EmoAct", "valence": "EmoVal", "dominance": "EmoDom"}
VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".flv")


def index_media(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Videos and wav files under ``root`` by stem; a stem seen twice is an error (no overwrites)."""
    videos: dict[str, Path] = {}
    wavs: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        suffix = path.suffix.lower()
        table = videos if suffix in VIDEO_EXTS else wavs if suffix == ".wav" else None
        if table is None:
            continue
        if path.stem in table:
            raise ConfigError(f"two files named {path.stem}{suffix}: {table[path.stem]} and {path}")
        table[path.stem] = path
    return videos, wavs


@DATASETS.register("mspimprov")
def mspimprov(opts: DatasetOptions) -> DatasetIndex:
    check_options(opts, "mspimprov")
    root = require_dir(opts.data, "mspimprov")
    if opts.labels is None:
        raise ConfigError(
            "mspimprov needs its labels CSV: --labels labels_consensus_1.csv (make: LABELS=...)"
        )
    videos, wavs = index_media(root)
    clips, missing = [], []
    need = ["FileName", "SpkrID", *TARGET_COLUMNS.values()]
    _, rows = read_csv(opts.labels, need, "mspimprov: labels")
    for line, row in rows:
        stem = Path(row["FileName"].strip()).stem
        if stem not in videos:
            missing.append(stem)
            continue
        clips.append(
            ClipRecord(
                clip_id=stem,
                video=str(videos[stem]),
                speaker=row["SpkrID"].strip(),
                audio=str(wavs[stem]) if stem in wavs else None,
                targets=row_targets(row, list(TARGET_COLUMNS.values()), opts.labels, line),
            )
        )
    if not clips:
        raise ConfigError(f"mspimprov: no video under {root} matches a FileName of {opts.labels}")
    clips.sort(key=lambda c: c.clip_id)
    notes = (
        [f"{len(missing)} labelled files have no video under {root} (e.g. {missing[:3]})"] if missing else []
    )
    return finish_index("mspimprov", root, clips, opts, targets=list(TARGET_COLUMNS), notes=notes)
