"""Small caches with the real layout and class-dependent random features (no media, no models)."""

from __future__ import annotations

import numpy as np

from extract.datasets.base import ClipRecord, DatasetIndex
from extract.datasets.folds import round_robin_groups, speaker_folds
from extract.store import CacheWriter, Capacity, ClipResult


def make_feature_cache(
    url: str,
    n_clips: int = 40,
    n_classes: int = 3,
    targets: tuple[str, ...] = (),
    d_image: int = 12,
    d_audio: int = 8,
    n_speakers: int = 5,
    seed: int = 0,
    config_hash: str = "testcache",
) -> str:
    """Write a cache whose features carry the label (a class-specific mean), lengths 6-14 frames."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_clips) % n_classes
    clips = [
        ClipRecord(
            clip_id=f"c{i:03d}",
            video=f"/x/c{i}.mp4",
            speaker=f"s{i % n_speakers}",
            label=-1 if targets else int(labels[i]),
            targets=tuple(float(labels[i]) / n_classes + 0.1 * k for k in range(len(targets))),
        )
        for i in range(n_clips)
    ]
    speakers = [c.speaker for c in clips]
    index = DatasetIndex(
        "toy",
        "/x",
        clips,
        classes=[] if targets else [f"class{k}" for k in range(n_classes)],
        targets=list(targets),
        folds=speaker_folds(speakers, round_robin_groups(speakers, 5)),
        folds_source="speaker-round-robin",
    )
    dims = {"image": d_image, "audio": d_audio, "audio_layers": 1, "audio_rate_hz": 50.0}
    attrs = {
        "config_hash": config_hash,
        "config": {},
        "dataset": "toy",
        "preset": "tiny",
        "tiny": True,
        "classes": index.classes,
        "targets": index.targets,
        "dims": dims,
        "models": {},
        "folds_source": index.folds_source,
        "code_version": "test",
        "notes": [],
    }
    w = CacheWriter.create_or_open(url, index, attrs, Capacity(frames=16, audio=40), dims)
    centres_v = rng.standard_normal((n_classes, d_image))
    centres_a = rng.standard_normal((n_classes, d_audio))
    for i in range(n_clips):
        t = int(rng.integers(6, 15))
        a = 2 * t + int(rng.integers(0, 6))
        k = labels[i]
        w.write_clip(
            i,
            ClipResult(
                (centres_v[k] + 0.5 * rng.standard_normal((t, d_image))).astype(np.float16),
                (centres_v[k] + 0.5 * rng.standard_normal((t - 1, d_image))).astype(np.float16),
                (centres_a[k] + 0.5 * rng.standard_normal((a, 1, d_audio))).astype(np.float16),
                np.arange(t, dtype=np.float32) / 25,
                np.zeros((t, 4), np.float32),
                np.ones(t, np.float32),
                np.ones(t, bool),
                25.0,
            ),
        )
    return url
