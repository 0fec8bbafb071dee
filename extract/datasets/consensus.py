"""Consensus labels: the soft label columns of VAVL partition CSVs, as hard and soft labels.

VAVL's CREMA-D files (``label_consensus_{1..5}.csv``) carry, for every listed clip, the share of
raters who chose each emotion (columns ``angry,sad,disgust,fear,neutral,happy``). The acted label
in the file name disagrees with their argmax for about one clip in six. With consensus labels a
clip's ``clips/label`` is the argmax (a tie is broken in favour of the acted label when it is among
the tied classes, else the first tied class in the cache's class order) and ``clips/soft_label``
holds the distribution, for training with a soft cross-entropy (``aver train --set data.labels=soft``).
A clip the files do not list has no label (-1, a NaN row).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aver.errors import ConfigError

from .base import ClipRecord, read_csv, row_targets


def read_consensus(files: list[Path], classes: list[str]) -> dict[str, np.ndarray]:
    """``{clip id: float64 [C] distribution}`` from the CSVs' class columns (matched by name,
    case-insensitively), rows normalised to sum 1. A clip listed in two files with other values,
    a negative or non-numeric share, or a row of zeros is a ``ConfigError`` naming file and line."""
    from .folds import _stem

    soft: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for path in files:
        columns, rows = read_csv(path, ["FileName"], "consensus labels")
        by_name = {c.strip().lower(): c for c in columns}
        missing = [c for c in classes if c.lower() not in by_name]
        if missing:
            raise ConfigError(
                f"consensus labels {path}: no column for the classes {missing}; columns are {columns}"
            )
        wanted = [by_name[c.lower()] for c in classes]
        for line, row in rows:
            v = np.asarray(row_targets(row, wanted, path, line), dtype=np.float64)
            if (v < 0).any() or v.sum() <= 0:
                raise ConfigError(
                    f"{path}, line {line}: consensus shares {v.tolist()} are not a distribution"
                )
            v = v / v.sum()
            name = _stem(row["FileName"])
            if name in soft and not np.allclose(soft[name], v, atol=1e-6):
                raise ConfigError(
                    f"{path}, line {line}: {name} has other consensus shares than in {origin[name]}"
                )
            soft[name], origin[name] = v, f"{path}"
    return soft


def apply_consensus(
    clips: list[ClipRecord], classes: list[str], soft: dict[str, np.ndarray], source: str
) -> tuple[np.ndarray, list[str]]:
    """Relabel ``clips`` in place with the consensus argmax; returns ``float32 [N, C]`` soft labels
    (NaN rows for clips the files do not list, whose label becomes -1) and notes saying how many
    labels changed, tied or went missing."""
    out = np.full((len(clips), len(classes)), np.nan, dtype=np.float32)
    changed = ties = absent = 0
    for i, clip in enumerate(clips):
        v = soft.get(clip.clip_id)
        if v is None:
            clip.label, absent = -1, absent + 1
            continue
        top = np.flatnonzero(v >= v.max() - 1e-9)
        hard = clip.label if clip.label in top else int(top[0])
        ties += len(top) > 1
        changed += hard != clip.label
        clip.label = hard
        out[i] = v
    labelled = len(clips) - absent
    notes = [
        f"labels: consensus argmax for {labelled} clips from {source}; it differs from the acted "
        f"(file-name) label for {changed} ({100 * changed / max(labelled, 1):.1f} %); {ties} ties broken in "
        "favour of the acted label (else the first tied class)"
    ]
    if absent:
        notes.append(f"{absent} clips have no consensus row and no label")
    if not labelled:
        raise ConfigError(f"consensus labels {source}: no FileName matches a clip id")
    return out, notes
