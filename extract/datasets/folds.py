"""Speaker-independent folds: generated deterministically, or imported from VAVL-style CSVs.

Generated folds (``speaker_folds``): speakers are split into ``n_folds`` groups; in fold k the
test speakers are group k, the validation speakers group (k + 1) mod n_folds, and the training
speakers all the others. Train, validation and test speakers are therefore always disjoint.

Imported folds (``vavl_folds``): one CSV per fold with a ``FileName`` and a ``Split_Set`` column
(``Train`` / ``Development`` / ``Test``), as published with VAVL (Goncalves & Busso). Clips a
fold file does not list are ``unused`` in that fold.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import numpy as np

from aver.errors import ConfigError
from aver.folds import round_robin_groups, speaker_folds
from aver.layout import TEST, TRAIN, UNUSED, VALIDATION

log = logging.getLogger(__name__)

_SPLITS = {
    "train": TRAIN,
    "development": VALIDATION,
    "dev": VALIDATION,
    "validation": VALIDATION,
    "test": TEST,
}


def expand_fold_files(spec: str) -> list[Path]:
    """``a_{fold}.csv`` -> the existing files for fold 1, 2, ...; ``a.csv,b.csv`` -> those files."""
    if "{fold}" in spec:
        files = []
        for k in range(1, 100):
            p = Path(spec.replace("{fold}", str(k))).expanduser()
            if not p.exists():
                break
            files.append(p)
        if not files:
            raise ConfigError(
                f"fold pattern {spec!r}: no file found for fold 1 ({spec.replace('{fold}', '1')})"
            )
        return files
    files = [
        Path(p).expanduser()
        for part in spec.split(",")
        for p in sorted(glob.glob(part.strip())) or [part.strip()]
    ]
    for p in files:
        if not p.is_file():
            raise ConfigError(f"fold file {p} does not exist")
    return files


def choose_folds(
    clip_ids: list[str],
    speakers: list[str],
    spec: str | None,
    n_folds: int,
    groups: list[list[str]] | None = None,
    groups_name: str = "",
) -> tuple[np.ndarray, str]:
    """Every adapter's fold policy: the user's fold files (``spec``) when given, else the corpus's
    published speaker groups (``groups``, named ``groups_name``), else round-robin over speakers."""
    if spec:
        return vavl_folds(spec, clip_ids, speakers)
    if groups is not None:
        return speaker_folds(speakers, groups), groups_name
    return speaker_folds(speakers, round_robin_groups(speakers, n_folds)), "speaker-round-robin"


def _stem(name: str) -> str:
    return Path(name.strip()).stem if "." in Path(name.strip()).name else name.strip()


def read_vavl_csv(path: Path) -> dict[str, int]:
    """``{clip id: split code}`` from one VAVL partition CSV (FileName, ..., Split_Set)."""
    from .base import read_csv

    _, rows = read_csv(path, ["FileName", "Split_Set"], "fold file")
    out: dict[str, int] = {}
    for line, row in rows:
        split = _SPLITS.get(row["Split_Set"].strip().lower())
        if split is None:
            raise ConfigError(
                f"fold file {path}, line {line}: Split_Set {row['Split_Set']!r} is not Train, Development or Test"
            )
        name = _stem(row["FileName"])
        if out.get(name, split) != split:
            raise ConfigError(f"fold file {path}, line {line}: {name} is listed again with another Split_Set")
        out[name] = split
    return out


def vavl_folds(spec: str, clip_ids: list[str], speakers: list[str]) -> tuple[np.ndarray, str]:
    """Fold table ``int8 [n_files, N]`` from VAVL CSVs, and a description of the source.

    Warns when a fold puts one speaker in two splits (the file breaks speaker independence).
    """
    files = expand_fold_files(spec)
    index = {cid: i for i, cid in enumerate(clip_ids)}
    table = np.full((len(files), len(clip_ids)), UNUSED, dtype=np.int8)
    for k, path in enumerate(files):
        rows = read_vavl_csv(path)
        unknown = [name for name in rows if name not in index]
        if len(unknown) == len(rows):
            raise ConfigError(
                f"fold file {path}: none of its {len(rows)} FileName values matches a clip id "
                f"(e.g. {unknown[:3]} vs {clip_ids[:3]})"
            )
        if unknown:
            log.warning(
                "fold file %s: %d files are not in the dataset (e.g. %s)", path, len(unknown), unknown[:3]
            )
        for name, split in rows.items():
            if name in index:
                table[k, index[name]] = split
        _warn_speaker_overlap(path, table[k], speakers)
    return table, "csv:" + ",".join(str(p) for p in files)


def _warn_speaker_overlap(path: Path, row: np.ndarray, speakers: list[str]) -> None:
    seen: dict[str, set[int]] = {}
    for split, spk in zip(row.tolist(), speakers, strict=True):
        if split != UNUSED:
            seen.setdefault(spk, set()).add(split)
    mixed = sorted(s for s, splits in seen.items() if len(splits) > 1)
    if mixed:
        log.warning(
            "fold file %s puts speakers %s in more than one split (not speaker-independent)", path, mixed[:5]
        )
