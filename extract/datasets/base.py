"""What every dataset adapter returns: a clip table, its label space and its folds."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aver.errors import ConfigError
from aver.layout import UNUSED
from aver.plugins import PluginRegistry
from aver.store import ClipTable


@dataclass
class ClipRecord:
    """One clip of a corpus.

    ``video`` is an absolute path; ``audio`` is a separate audio file or ``None`` when the audio
    track of ``video`` is used. ``label`` indexes ``DatasetIndex.classes`` (-1 = none);
    ``targets`` follows ``DatasetIndex.targets`` (empty when the corpus has none).
    """

    clip_id: str
    video: str
    speaker: str
    audio: str | None = None
    label: int = -1
    targets: tuple[float, ...] = ()


@dataclass
class DatasetOptions:
    """User inputs an adapter may need; each adapter says which ones it reads."""

    data: Path | None = None  # raw dataset folder
    labels: Path | None = None  # a labels CSV (mspimprov: VAVL format; folder: the clip table)
    folds: str | None = None  # fold files: a pattern with {fold}, or comma-separated paths
    targets: tuple[str, ...] = ()  # folder: names of continuous target columns
    n_folds: int = 5
    options: dict = field(default_factory=dict)  # adapter-specific (--dataset-option key=value)
    protocol: str | None = None  # a named fold protocol (mocanu2023-10fold, avtca-random) instead

    def __post_init__(self) -> None:
        self.data = Path(self.data) if self.data else None
        self.labels = Path(self.labels) if self.labels else None


@dataclass
class DatasetIndex:
    """A corpus ready for extraction: clips in a fixed order, labels and folds."""

    name: str
    root: str
    clips: list[ClipRecord]
    classes: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    folds: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8))  # int8 [n_folds, N]
    folds_source: str = ""
    notes: list[str] = field(default_factory=list)
    soft_labels: np.ndarray | None = None  # float32 [N, C] consensus distributions (NaN rows: none)
    label_source: str = "file name"

    def __post_init__(self) -> None:
        ids = [c.clip_id for c in self.clips]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ConfigError(f"dataset {self.name!r}: clip ids must be unique; duplicated: {dup}")
        if self.folds.size and self.folds.shape[1] != len(self.clips):
            raise ValueError(
                f"dataset {self.name!r}: folds cover {self.folds.shape[1]} clips, not {len(self.clips)}"
            )

    def table(self) -> ClipTable:
        """The clip table the store writer takes (video paths relative to ``root``)."""
        n = len(self.clips)
        return ClipTable(
            ids=[c.clip_id for c in self.clips],
            speakers=[c.speaker for c in self.clips],
            videos=[_relative(c.video, self.root) for c in self.clips],
            labels=np.array([c.label for c in self.clips], dtype=np.int16),
            targets=np.array([c.targets for c in self.clips], dtype=np.float32).reshape(n, len(self.targets)),
            folds=self.folds,
            classes=list(self.classes),
            target_names=list(self.targets),
            folds_source=self.folds_source,
            soft_labels=self.soft_labels,
            label_source=self.label_source,
        )


def _relative(path: str, root: str) -> str:
    import os

    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


Adapter = Callable[["DatasetOptions"], "DatasetIndex"]

PLUGIN_GROUP = "aver.datasets"  # entry-point group of third-party adapters (docs/adding-a-dataset.md)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_adapter(name: str, adapter: object) -> None:
    if not callable(adapter):
        raise TypeError(f"dataset {name!r} is a {type(adapter).__name__}, not an adapter function")


# Built-ins register at import; plugins of PLUGIN_GROUP join on the first lookup (aver.plugins).
DATASETS: PluginRegistry[Adapter] = PluginRegistry("dataset", PLUGIN_GROUP, check=_check_adapter)


def register_dataset(name: str) -> Callable[[Adapter], Adapter]:
    """Decorator: make ``adapter(opts: DatasetOptions) -> DatasetIndex`` the dataset ``name``.

    The public way to add a corpus, in aver or in a plugin package (entry-point group
    ``aver.datasets``, whose entry point's name must be ``name``): ``name`` becomes the
    ``aver extract --dataset`` choice, the store's file name (``<cache>/<name>.zarr``) and the
    dataset recorded in the cache. Letters, digits, ``_``, ``.`` and ``-`` only. A name that is
    already registered (a built-in, or another plugin) is a ``ValueError``: nothing is replaced.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"dataset name {name!r}: use letters, digits, '_', '.' or '-' (starting with a letter or digit)"
        )

    def decorator(adapter: Adapter) -> Adapter:
        _check_adapter(name, adapter)
        try:
            return DATASETS.add(name, adapter)  # add, not a lookup: never loads plugins itself
        except ValueError:
            raise ValueError(
                f"dataset {name!r} is already registered (a built-in or another plugin); choose another name"
            ) from None

    return decorator


def require_dir(path: Path | None, dataset: str, what: str = "DATA") -> Path:
    """The raw-data folder, or a ConfigError saying how to give it."""
    if path is None:
        raise ConfigError(
            f"dataset {dataset!r} needs its raw data folder: pass --data DIR (make: {what}=DIR)"
        )
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"dataset {dataset!r}: data folder {path} does not exist or is not a folder")
    return path


# Options every adapter takes (``--dataset-option key=value``), besides its own.
COMMON_OPTIONS = {
    "skip_unused": "true: leave out clips that no fold uses (default: extract them, with a note)"
}


def check_options(opts: DatasetOptions, dataset: str, own: dict[str, str] | None = None) -> None:
    """Refuse an option neither the adapter (``own``) nor ``COMMON_OPTIONS`` knows, naming the known ones."""
    known = {**COMMON_OPTIONS, **(own or {})}
    unknown = sorted(set(opts.options) - set(known))
    if unknown:
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(known.items()))
        raise ConfigError(f"{dataset}: unknown --dataset-option {unknown}; known: {listing}")


def option_flag(opts: DatasetOptions, key: str) -> bool:
    """A yes/no ``--dataset-option`` (true/false/1/0/yes/no; JSON booleans from ``parse_kv``)."""
    value = opts.options.get(key, False)
    if isinstance(value, bool | int):
        return bool(value)
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"--dataset-option {key}={value!r}: expected true or false")
    return text in ("true", "1", "yes")


def finish_index(
    name: str,
    root: str | Path,
    clips: list[ClipRecord],
    opts: DatasetOptions,
    *,
    classes: list[str] | None = None,
    targets: list[str] | None = None,
    notes: list[str] | None = None,
    groups: list[list[str]] | None = None,
    groups_name: str = "",
    soft_labels: np.ndarray | None = None,
    label_source: str = "file name",
) -> DatasetIndex:
    """The end of every adapter: apply the one fold policy (``folds.choose_folds``), report the
    clips no fold uses (and leave them out with ``skip_unused=true``), and build the index."""
    from .folds import choose_folds

    notes = list(notes or [])
    folds, source = choose_folds(
        [c.clip_id for c in clips], [c.speaker for c in clips], opts.folds, opts.n_folds, groups, groups_name
    )
    if opts.protocol and opts.protocol != "cache":
        folds, source = _protocol(clips, opts.protocol)
    unused = np.flatnonzero((folds == UNUSED).all(0)) if folds.size else np.zeros(0, np.int64)
    skip = set(unused.tolist())
    unlabelled = [c.clip_id for i, c in enumerate(clips) if classes and c.label < 0 and i not in skip]
    if unlabelled and folds.size:
        raise ConfigError(
            f"{name}: {len(unlabelled)} clips without a label are in a fold's train, validation or test "
            f"split (e.g. {unlabelled[:3]}); give fold files that leave them out (e.g. the same VAVL files)"
        )
    if len(unused):
        example = [clips[i].clip_id for i in unused[:3]]
        if option_flag(opts, "skip_unused"):
            keep = np.setdiff1d(np.arange(len(clips)), unused)
            clips = [clips[i] for i in keep]
            folds = folds[:, keep]
            soft_labels = None if soft_labels is None else soft_labels[keep]
            notes.append(f"left out {len(unused)} clips that no fold uses (skip_unused; e.g. {example})")
        else:
            notes.append(
                f"{len(unused)} of {len(clips)} clips are in no fold (e.g. {example}): they are extracted "
                "but no fold trains or tests on them; --dataset-option skip_unused=true leaves them out"
            )
    return DatasetIndex(
        name,
        str(root),
        clips,
        classes=list(classes or []),
        targets=list(targets or []),
        folds=folds,
        folds_source=source,
        notes=notes,
        soft_labels=soft_labels,
        label_source=label_source if classes else "",
    )


def _protocol(clips: list[ClipRecord], name: str) -> tuple[np.ndarray, str]:
    """The fold table of named protocol ``name`` (``aver.folds.PROTOCOLS``) for these clips."""
    from aver.folds import protocol_folds

    labels = np.array([c.label for c in clips], dtype=np.int64)
    return protocol_folds(np.array([c.speaker for c in clips]), labels, name), f"protocol {name}"


def read_csv(
    path: Path, required: list[str], what: str
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Columns and ``(line number, row)`` pairs of a UTF-8 CSV, every row holding ``required``.

    Every problem is a ``ConfigError`` naming the file (and line): a missing file, bytes that are
    not UTF-8, a missing column, a row with fewer fields than the header.
    """
    import csv

    path = Path(path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(enumerate(reader, start=2))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise ConfigError(f"{what} {path}: cannot be read as CSV ({e})") from None
    absent = [c for c in required if c not in columns]
    if absent:
        raise ConfigError(f"{what} {path}: missing columns {absent}; columns are {columns}")
    for line, row in rows:
        short = [c for c in required if row.get(c) is None]
        if short:
            raise ConfigError(f"{what} {path}, line {line}: too few fields (no value for {short})")
    return columns, rows


def row_targets(row: dict[str, str], columns: list[str], path: Path, line: int) -> tuple[float, ...]:
    """The continuous targets of one CSV row; a value that is not a finite number is a ``ConfigError``
    naming the file, the line and the column."""
    import math

    values = []
    for col in columns:
        try:
            v = float(row[col])
        except ValueError:
            raise ConfigError(f"{path}, line {line}: target {col}={row[col]!r} is not a number") from None
        if not math.isfinite(v):
            raise ConfigError(f"{path}, line {line}: target {col}={row[col]!r} is not finite")
        values.append(v)
    return tuple(values)
