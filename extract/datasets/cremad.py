"""CREMA-D: ``VideoFlash/<id>.flv`` with its audio in ``AudioWAV/<id>.wav``.

Ids look like ``1001_DFA_ANG_XX`` (actor, sentence, emotion, level). 6 classes, actor as speaker.
Default folds deal the 91 actors round-robin (sorted by id) into 5 groups; the VAVL partition
files (``label_consensus_{fold}.csv``) can be given with ``--fold-files``. Four clips are known to
be broken in the release (1076_MTI_NEU_XX, 1076_MTI_SAD_XX, 1064_TIE_SAD_XX, 1064_IEO_DIS_MD): they
end as recorded failures like any other unreadable clip.

Labels (``--dataset-option labels=...``): ``file`` (default) is the acted emotion of the file name;
``consensus`` reads VAVL's soft consensus columns (``angry,sad,disgust,fear,neutral,happy``) from
``--labels`` (a file, a list or a ``{fold}`` pattern) or, without it, from the fold files, and
stores their argmax as the label and the distribution as ``clips/soft_label`` (see ``consensus``).
"""

from __future__ import annotations

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

CREMAD_CODES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
CREMAD_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad"]
KNOWN_BROKEN = ("1076_MTI_NEU_XX", "1076_MTI_SAD_XX", "1064_TIE_SAD_XX", "1064_IEO_DIS_MD")
OPTIONS = {"labels": "file (the acted label of the file name, default) or consensus (VAVL soft labels)"}


@DATASETS.register("cremad")
def cremad(opts: DatasetOptions) -> DatasetIndex:
    check_options(opts, "cremad", OPTIONS)
    root = require_dir(opts.data, "cremad")
    video_dir, audio_dir = root / "VideoFlash", root / "AudioWAV"
    if not video_dir.is_dir():
        raise ConfigError(f"cremad: {video_dir} not found (expected VideoFlash/*.flv and AudioWAV/*.wav)")
    clips, notes = [], []
    for path in sorted(video_dir.glob("*.flv")):
        parts = path.stem.split("_")
        if len(parts) != 4 or parts[2] not in CREMAD_CODES:
            notes.append(f"skipped {path.name}: not an <actor>_<sentence>_<emotion>_<level> name")
            continue
        wav = audio_dir / f"{path.stem}.wav"
        clips.append(
            ClipRecord(
                clip_id=path.stem,
                video=str(path),
                speaker=parts[0],
                audio=str(wav) if wav.exists() else None,
                label=CREMAD_CODES.index(parts[2]),
            )
        )
    if not clips:
        raise ConfigError(f"cremad: no <id>.flv files in {video_dir}")
    no_wav = sum(c.audio is None for c in clips)
    if no_wav:
        notes.append(f"{no_wav} clips have no AudioWAV/<id>.wav; their audio is read from the .flv")
    labels = str(opts.options.get("labels", "file"))
    if labels == "file":
        return finish_index("cremad", root, clips, opts, classes=CREMAD_CLASSES, notes=notes)
    if labels != "consensus":
        raise ConfigError(f"cremad: --dataset-option labels={labels!r}: choose file or consensus")
    soft, listing, more = _consensus(clips, opts)
    return finish_index(
        "cremad",
        root,
        clips,
        opts,
        classes=CREMAD_CLASSES,
        notes=notes + more,
        soft_labels=soft,
        label_source=f"consensus argmax:{listing}",
    )


def _consensus(clips: list[ClipRecord], opts: DatasetOptions):
    """Consensus labels from ``--labels`` or else the fold files: (soft labels, files, notes)."""
    from .consensus import apply_consensus, read_consensus
    from .folds import expand_fold_files

    spec = str(opts.labels) if opts.labels else opts.folds
    if not spec:
        raise ConfigError(
            "cremad: labels=consensus reads VAVL's label_consensus_{fold}.csv: give them with "
            "--labels or --fold-files"
        )
    files = expand_fold_files(spec)
    listing = ",".join(str(p) for p in files)
    soft, notes = apply_consensus(clips, CREMAD_CLASSES, read_consensus(files, CREMAD_CLASSES), listing)
    return soft, listing, notes
