"""Build small caches with the real layout and class-dependent random features (no media, no models).

The one helper tests and benchmarks use to make a cache: it writes through ``aver.store`` exactly
as extraction does, so a cache built here is read by the same code as a real one.
"""

from __future__ import annotations

import contextlib

import numpy as np

from aver import layout as L
from aver.folds import round_robin_groups, speaker_folds
from aver.store import CacheWriter, Capacity, ClipResult, ClipTable


def build_feature_cache(
    url: str,
    n_clips: int = 40,
    n_classes: int = 3,
    targets: tuple[str, ...] = (),
    d_image: int = 12,
    d_audio: int = 8,
    n_speakers: int = 5,
    frames: tuple[int, int] = (6, 15),
    fps: float = 25.0,
    separation: float = 1.0,
    seed: int = 0,
    config_hash: str = "testcache",
    dataset: str = "toy",
    class_names: list[str] | None = None,
    id_prefix: str = "c",
    flow_window: int = 1,
    flow_stride: int = 1,
    soft_labels: bool = False,
) -> str:
    """Write a cache at ``url`` and return it.

    Clip i has label ``i % n_classes`` (or targets derived from it), speaker ``s<i % n_speakers>``,
    ``frames[0] <= T < frames[1]`` frames, ``T - 1`` flow maps and about ``2 T`` audio frames.
    Features are a class centre times ``separation`` plus unit-scale noise (x 0.5), so a model can
    learn the classes; ``separation=0`` gives pure noise (throughput benchmarks). ``soft_labels``
    adds consensus distributions (0.7 on the label, the rest spread evenly), as VAVL's CREMA-D.
    """
    labels = np.arange(n_clips) % n_classes
    table = _table(n_clips, n_classes, labels, targets, n_speakers, id_prefix)
    if class_names and not targets:
        table.classes = list(class_names)
    if soft_labels and not targets:
        soft = np.full((n_clips, n_classes), 0.3 / max(n_classes - 1, 1), np.float32)
        soft[np.arange(n_clips), labels] = 0.7
        table.soft_labels, table.label_source = soft, "consensus argmax:aver.testing"
    dims = {"image": d_image, "audio": d_audio, "audio_layers": 1, "audio_rate_hz": 50.0}
    attrs = {
        "config_hash": config_hash,
        "config": {"flow": {"window": flow_window, "stride": flow_stride}},
        "dataset": dataset,
        "preset": "tiny",
        "tiny": True,
        "models": {},
        "code_version": "aver.testing",
        "notes": [],
    }
    cap = Capacity(frames=frames[1] + 1, audio=2 * frames[1] + 8)
    w = CacheWriter.create_or_open(url, table, attrs, cap, dims, overwrite=True)
    schedule = (flow_window, flow_stride)
    _write_clips(w, labels, frames, fps, separation, seed, d_image, d_audio, n_classes, schedule)
    return url


def _write_clips(w, labels, frames, fps, separation, seed, d_image, d_audio, n_classes, schedule) -> None:
    rng = np.random.default_rng(seed)
    centres_v = separation * rng.standard_normal((n_classes, d_image))
    centres_a = separation * rng.standard_normal((n_classes, d_audio))
    for i in range(len(labels)):
        t = int(rng.integers(*frames))
        a = 2 * t + int(rng.integers(0, 6))
        k = labels[i]

        def noisy(centre, shape):
            return (centre + 0.5 * rng.standard_normal(shape)).astype(np.float16)

        w.write_clip(
            i,
            ClipResult(
                noisy(centres_v[k], (t, d_image)),
                noisy(centres_v[k], (len(range(0, t - schedule[0], schedule[1])), d_image)),
                noisy(centres_a[k], (a, 1, d_audio)),
                np.arange(t, dtype=np.float32) / fps,
                np.zeros((t, 4), np.float32),
                np.ones(t, np.float32),
                np.ones(t, bool),
                fps,
            ),
        )


def _table(
    n_clips: int, n_classes: int, labels: np.ndarray, targets: tuple[str, ...], n_speakers: int, prefix: str
) -> ClipTable:
    speakers = [f"s{i % n_speakers}" for i in range(n_clips)]
    return ClipTable(
        ids=[f"{prefix}{i:03d}" for i in range(n_clips)],
        speakers=speakers,
        videos=[f"c{i:05d}.mp4" for i in range(n_clips)],
        labels=np.full(n_clips, -1) if targets else labels,
        targets=np.array(
            [[labels[i] / n_classes + 0.1 * k for k in range(len(targets))] for i in range(n_clips)]
        ),
        folds=speaker_folds(speakers, round_robin_groups(speakers, 5)),
        classes=[] if targets else [f"class{k}" for k in range(n_classes)],
        target_names=list(targets),
        folds_source="speaker-round-robin",
    )


@contextlib.contextmanager
def local_s3(bucket: str):
    """A moto S3 server on a free local port with ``bucket`` created (the ``dev`` extra: moto,
    boto3, s3fs); yields the fsspec storage options that reach it. For tests and benchmarks."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        boto3.client(
            "s3", aws_access_key_id="testing", aws_secret_access_key="testing", **client
        ).create_bucket(Bucket=bucket)
        yield {"key": "testing", "secret": "testing", "client_kwargs": client}
    finally:
        server.stop()


def add_toy_inputs(
    url: str,
    crop_frames: int = 8,
    crop_size: int = 32,
    seconds: tuple[float, float] = (0.4, 1.2),
    seed: int = 0,
) -> str:
    """Give a ``build_feature_cache`` store end-to-end inputs a model can learn from: each class has
    its own face tint and its own tone (plus noise), so crops and waveforms both carry the label."""
    from aver.store import ClipInputs

    w = CacheWriter(url)
    labels = w.group[L.LABEL][:]
    n_classes = max(int(labels.max()) + 1, 1)
    rng = np.random.default_rng(seed)
    w.add_inputs(
        {
            "crops": True,
            "crop_frames": crop_frames,
            "crop_size": crop_size,
            "wave": True,
            "sample_rate": 16000,
            "crop_frames_capacity": crop_frames,
            "wave_capacity": int(seconds[1] * 16000) + 1,
        }
    )
    tints = rng.integers(40, 215, size=(n_classes, 3))
    for i, k in enumerate(labels):
        crops = np.clip(tints[k] + rng.normal(0, 25, (crop_frames, crop_size, crop_size, 3)), 0, 255)
        n = int(rng.uniform(*seconds) * 16000)
        tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * k) * np.arange(n) / 16000) + 0.05 * rng.standard_normal(
            n
        )
        wave = np.round(np.clip(tone, -1, 1) * 32767).astype(np.int16)
        w.write_inputs(i, ClipInputs(crops.astype(np.uint8), np.arange(crop_frames), wave))
    return url


def reseal(url: str) -> str:
    """Record the digests of a store's clip table as it is now (``attrs.aver.table_digest`` and each
    committed clip's ``table:*`` entries): for tests that build a store by editing another one's
    table on purpose. Anything else that changes a table is damage, which readers refuse."""
    import json

    from aver import layout as L
    from aver.integrity import (
        COORDINATES,
        TABLE_ARRAYS,
        TABLE_DIGEST,
        TABLE_KEY,
        parse,
        row_digests,
        table_digests,
    )

    g = L.open_root(url, "r+")
    names = [n for n in (*TABLE_ARRAYS, *COORDINATES) if L.has_array(g, n)]
    columns = {n: g[n][:] for n in names}
    meta = dict(g.attrs[L.ATTRS_KEY])
    meta[TABLE_DIGEST] = table_digests(columns)
    g.attrs[L.ATTRS_KEY] = meta
    if L.has_array(g, L.DIGEST):
        records = g[L.DIGEST][:]
        for i, text in enumerate(records):
            rec = parse(text)
            if rec and not set(rec) <= {L.ERROR}:
                rec = {k: v for k, v in rec.items() if not k.startswith(TABLE_KEY)} | row_digests(columns, i)
                g[L.DIGEST][i] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    return url
