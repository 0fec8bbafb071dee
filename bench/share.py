"""Sharing a cache through object storage: the working store against its packed copy.

    python bench/share.py [--clips 1440] [--frames 90 158] [--d-image 1408] [--d-audio 1024]

Builds a cache of RAVDESS size with synthetic values (1,440 clips of 90-158 frames, 24 speakers,
5 folds; ``--d-image/--d-audio`` shrink the feature widths, which changes bytes but not objects or
requests), packs it (``aver cache pack``), uploads both to a local moto S3 server and loads fold 1
the way ``aver train`` does (open the cache, read every split's features). Prints one table:
objects and bytes of each store, S3 requests (s3fs calls) and seconds to load the fold. Needs the
``dev`` extra (moto, s3fs). Never asserted on in tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Calls(logging.Handler):
    """Counts s3fs's ``CALL:`` debug records: one per S3 request it makes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("CALL:"):
            self.n += 1


def load_fold(url: str, opts: dict, calls: _Calls) -> tuple[int, float, int]:
    """(requests, seconds, clips) to open ``url`` and read fold 1's three splits as training does."""
    import numpy as np

    from aver.cache import FeatureCache
    from aver.train.data import DataConfig, load_clips

    calls.n = 0
    t0 = time.perf_counter()
    cache = FeatureCache(url, opts)
    idx = np.concatenate([cache.split_indices(1, s) for s in ("train", "validation", "test")])
    clips = load_clips(cache, idx, DataConfig())
    return calls.n, time.perf_counter() - t0, len(clips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1440)
    ap.add_argument("--frames", type=int, nargs=2, default=(90, 158))
    ap.add_argument("--d-image", type=int, default=1408)
    ap.add_argument("--d-audio", type=int, default=1024)
    ap.add_argument("--shard-clips", type=int, default=64)
    args = ap.parse_args()
    import fsspec

    from aver.info import storage_size
    from aver.pack import pack
    from aver.testing import build_feature_cache, local_s3
    from bench.extract import machine

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    calls = _Calls()
    log = logging.getLogger("s3fs")
    log.setLevel(logging.DEBUG)
    log.addHandler(calls)
    log.propagate = False
    rows = []
    with local_s3("caches") as opts, tempfile.TemporaryDirectory() as tmp:
        fs = fsspec.filesystem("s3", **opts)
        src = build_feature_cache(
            str(Path(tmp) / "ravdess.zarr"),
            n_clips=args.clips,
            n_classes=8,
            n_speakers=24,
            frames=tuple(args.frames),
            d_image=args.d_image,
            d_audio=args.d_audio,
            separation=0.0,
        )
        packed = str(Path(tmp) / "packed.zarr")
        pack(src, packed, shard_clips=args.shard_clips, progress=False)
        for name, local in (("working store", src), (f"packed ({args.shard_clips} clips/shard)", packed)):
            remote = f"s3://caches/{Path(local).name}"
            fs.put(local, remote.removeprefix("s3://"), recursive=True)
            objects, size = storage_size(remote, opts)
            requests, seconds, n = load_fold(remote, opts, calls)
            rows.append((name, objects, size, requests, seconds, n))
    print(f"machine: {machine()}")
    print(
        f"{args.clips} clips of {args.frames[0]}-{args.frames[1]} frames, features {args.d_image}/{args.d_audio}-d; "
        "fold 1 (train + validation + test) loaded from moto S3 on this machine"
    )
    print("| store | objects | MB | requests to load fold 1 | seconds | clips |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, objects, size, requests, seconds, n in rows:
        print(f"| {name} | {objects} | {size / 1e6:.1f} | {requests} | {seconds:.1f} | {n} |")
    if len(rows) == 2:
        print(
            f"packed: {rows[0][3] / max(rows[1][3], 1):.1f}x fewer requests, {rows[0][1] / rows[1][1]:.0f}x fewer objects"
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
