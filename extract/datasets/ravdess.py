"""RAVDESS (speech, audio-visual) and the embedded synthetic corpus, which uses its layout.

File names are ``MM-VC-EE-II-SS-RR-AA.mp4``: modality (01 AV, 02 video only, 03 audio only),
vocal channel (01 speech, 02 song), emotion, intensity, statement, repetition, actor. The
``Video_Speech_Actor_XX`` archives hold both ``01-`` (with audio) and ``02-`` (silent) copies:
only ``01-01-*`` files are taken. The actor is the speaker.

Folds: the 5-fold actor split published with MMEmotionRecognition (cristinalunaj):
{2,5,14,15,16} {3,6,7,13,18} {10,11,12,19,20} {8,17,21,23,24} {1,4,9,22}; fold k tests on group k
and validates on group k+1 (mod 5). The community has no fixed split: ``--fold-files`` accepts yours.
"""

from __future__ import annotations

import re
from pathlib import Path

from aver.errors import ConfigError

from .base import (
    DATASETS,
    ClipRecord,
    DatasetIndex,
    DatasetOptions,
    check_options,
    finish_index,
    require_dir,
)

RAVDESS_CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
RAVDESS_EMOTIONS: dict[int, str] = dict(enumerate(RAVDESS_CLASSES, start=1))  # file-name code -> name
RAVDESS_GROUPS = [
    [2, 5, 14, 15, 16],
    [3, 6, 7, 13, 18],
    [10, 11, 12, 19, 20],
    [8, 17, 21, 23, 24],
    [1, 4, 9, 22],
]
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def parse_name(stem: str) -> dict[str, int] | None:
    """The seven codes of a RAVDESS file stem, or None if the stem is not one."""
    m = _NAME.match(stem)
    if not m:
        return None
    keys = ("modality", "vocal", "emotion", "intensity", "statement", "repetition", "actor")
    return dict(zip(keys, (int(g) for g in m.groups()), strict=True))


def scan_ravdess(root: Path, classes: list[str]) -> tuple[list[ClipRecord], list[str]]:
    """Speech audio-visual clips under ``root`` (recursively), sorted by id, and notes on skips."""
    clips, skipped = [], 0
    for path in sorted(root.rglob("*.mp4")):
        codes = parse_name(path.stem)
        if codes is None or codes["modality"] != 1 or codes["vocal"] != 1:
            skipped += 1
            continue
        name = RAVDESS_CLASSES[codes["emotion"] - 1] if 1 <= codes["emotion"] <= 8 else None
        if name not in classes:
            raise ConfigError(f"{path}: emotion code {codes['emotion']:02d} is not one of {classes}")
        clips.append(
            ClipRecord(
                clip_id=path.stem, video=str(path), speaker=f"{codes['actor']:02d}", label=classes.index(name)
            )
        )
    notes = [f"skipped {skipped} files that are not 01-01-* (speech, audio-visual)"] if skipped else []
    return clips, notes


@DATASETS.register("ravdess")
def ravdess(opts: DatasetOptions) -> DatasetIndex:
    check_options(opts, "ravdess")
    root = require_dir(opts.data, "ravdess")
    clips, notes = scan_ravdess(root, RAVDESS_CLASSES)
    if not clips:
        raise ConfigError(
            f"ravdess: no 01-01-*.mp4 files under {root} (extract the Video_Speech_Actor_XX zips there)"
        )
    actors = {c.speaker for c in clips}
    groups = [[f"{a:02d}" for a in g] for g in RAVDESS_GROUPS]
    if not actors <= {s for g in groups for s in g}:
        groups = None  # actors outside 1..24: fall back to a generated split
    return finish_index(
        "ravdess",
        root,
        clips,
        opts,
        classes=RAVDESS_CLASSES,
        notes=notes,
        groups=groups,
        groups_name="ravdess-mmer-5fold",
    )


@DATASETS.register("synthetic")
def synthetic(opts: DatasetOptions) -> DatasetIndex:
    """The embedded corpus: generated on first use into ``--data`` (default ``data/synthetic``).

    ``options`` may override fields of ``SyntheticSpec`` (e.g. ``n_actors=3``, ``seconds=0.8``).
    """
    import dataclasses

    from ..synthetic import SyntheticSpec, generate_corpus

    fields = {f.name: f"SyntheticSpec.{f.name}" for f in dataclasses.fields(SyntheticSpec)}
    check_options(opts, "synthetic", fields)
    given = {k: v for k, v in opts.options.items() if k in fields}
    spec = SyntheticSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    root = Path(opts.data or "data/synthetic").expanduser().resolve()
    generate_corpus(root, spec)
    classes = list(spec.emotions)
    clips, notes = scan_ravdess(root, classes)
    return finish_index("synthetic", root, clips, opts, classes=classes, notes=notes)
