"""What integrity checking costs: opening a store, ``aver cache verify``, and training's load.

    python bench/integrity.py [--clips 1440] [--workdir /tmp/aver-bench-integrity]

Builds (once) a cache of RAVDESS-like clips (``bench/train.py``'s: 90-160 frames of 1408-d frame and
flow features, 50 Hz 1024-d audio) and times, on it:

- opening it (``FeatureCache``: the clip table against ``attrs.aver.table_digest``, every clip's
  status against its digest record);
- ``verify`` of every clip (every array against its digests, padding included), per clip;
- a fold's training load: the full verification of the fold's clips that ``fold_splits`` now does
  (``require_intact(full=True)``), beside the feature load itself (``load_clips``, which checks the
  features it returns against their digests), so the overhead is the first over the second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1440)
    ap.add_argument("--workdir", default="/tmp/aver-bench-integrity")
    args = ap.parse_args()

    import numpy as np

    from aver.cache import FeatureCache
    from aver.layout import UNUSED
    from aver.train.data import DataConfig, load_clips
    from bench.train import build_cache

    url = str(Path(args.workdir) / f"ravdess_like_{args.clips}.zarr")
    if not Path(url).exists():
        _, built = _timed(lambda: build_cache(url, args.clips))
        print(f"built {url} in {built:.0f} s")
    cache, open_s = _timed(lambda: FeatureCache(url))
    (problems, verified, _), verify_s = _timed(lambda: FeatureCache(url).verify())
    fold = np.flatnonzero(cache.folds[0] != UNUSED)
    used = np.concatenate([cache.split_indices(1, s) for s in ("train", "validation", "test")])
    _, check_s = _timed(lambda: FeatureCache(url).require_intact(fold, full=True))
    _, load_s = _timed(lambda: load_clips(FeatureCache(url), used, DataConfig()))
    n = len(cache.ids)
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| clips | {n} ({verified} verified, {len(problems)} problems) |")
    print(f"| open (table digests, status vs records) | {open_s:.2f} s ({1e3 * open_s / n:.2f} ms/clip) |")
    print(
        f"| `aver cache verify` (every array, padding) | {verify_s:.1f} s ({1e3 * verify_s / n:.1f} ms/clip) |"
    )
    print(f"| training: full verification of fold 1 ({len(fold)} clips) | {check_s:.1f} s |")
    print(f"| training: loading fold 1's clips ({len(used)}; features checked as read) | {load_s:.1f} s |")
    print(f"| verification overhead on the fold's load | {100 * check_s / max(load_s, 1e-9):.0f} % |")


if __name__ == "__main__":
    main()
