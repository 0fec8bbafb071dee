"""What a sweep costs beside the training it schedules.

    python bench/sweep.py [--runs 12] [--epochs 3] [--workers 1,2] [--workdir DIR]

On a toy cache (aver.testing.build_feature_cache: 5 folds, 64-d features) it times, for the same
``--runs`` tiny DE-III runs (2 variants × folds × seeds, one run folder each):

- ``direct``: each run's ``TrainConfig`` trained by ``train_fold`` one after another in this process,
  the work a sweep schedules;
- ``sweep, serial``: ``aver.sweep`` in this process (planning and its checks, the run-folder
  bookkeeping, statistics, sweep.md / .csv / .json and the forest plot);
- ``sweep, N workers``: the same on a local Dask cluster of N worker processes (start-up included);
- ``resume``: the same command again, where every run is complete and nothing trains.

and prints per row the wall time, the time per run and the overhead per run against ``direct``
(target: under 2 s per run on a 2-core CPU). Workers share the machine's cores, so on 2 cores two
workers mostly buy the overlap of one run's Python overheads with the other's arithmetic.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=12, help="runs per sweep: 2 variants × folds × seeds")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="local Dask cluster sizes to time")
    ap.add_argument("--workdir", help="where the cache and the run folders go (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aver").setLevel(logging.WARNING)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="aver-bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)

    from aver.testing import build_feature_cache
    from aver.train import sweep
    from aver.train.api import train_fold
    from aver.train.config import TrainConfig, make_config
    from aver.train.sweeper import plan_jobs

    cache = str(work / "toy.zarr")
    if not Path(cache).exists():
        build_feature_cache(cache)
    # 12 runs: 2 variants × 3 folds × 2 seeds (the toy cache has 5 folds)
    per_variant = max(1, args.runs // 2)
    n_folds = next(k for k in (3, 5, 4, 2, 1) if per_variant % k == 0)
    folds = list(range(1, n_folds + 1))
    seeds = list(range(per_variant // n_folds))
    runs = 2 * len(folds) * len(seeds)
    from aver.train.systems import SYSTEMS

    system = SYSTEMS.default_name()  # DE-III
    variants = [SYSTEMS.get(system).default_variant, "none_ife"]
    fields = {"epochs": args.epochs, "patience": args.epochs, "progress": False}
    overrides = ["model.d_model=16"]

    rows = []
    configs = {
        v: make_config("tiny", overrides, cache=cache, system=system, variant=v, out="", **fields)
        for v in variants
    }
    jobs = plan_jobs(configs, folds, seeds, work / "direct")
    t0 = time.perf_counter()
    for job in jobs:
        train_fold(TrainConfig.from_dict(job.config))
    direct = time.perf_counter() - t0
    rows.append(("direct (train_fold, one by one)", direct))

    def timed(name: str, out: str, workers: int) -> None:
        t = time.perf_counter()
        doc = sweep(
            cache,
            system=system,
            variants=variants,
            folds=folds,
            seeds=seeds,
            out=str(work / out),
            preset="tiny",
            overrides=overrides,
            workers=workers,
            **fields,
        )
        if doc["failed"]:  # a timing of failed runs would mean nothing
            raise SystemExit(f"{name}: runs failed: {doc['failed']}")
        rows.append((name, time.perf_counter() - t))

    timed("sweep, serial", "serial", 0)
    timed("resume (all complete)", "serial", 0)
    for n in (int(x) for x in args.workers.split(",") if x):
        timed(f"sweep, {n} worker{'s' * (n > 1)} (local Dask)", f"w{n}", n)

    print(
        f"\n{runs} runs (2 variants × {len(folds)} folds × {len(seeds)} seeds), {args.epochs} epochs each\n"
    )
    print(f"| {'':<36} | wall s | s per run | overhead s per run vs direct |")
    print(f"| {'-' * 36} | ------ | --------- | ----------------------------- |")
    for name, seconds in rows:
        over = (
            ""
            if name.startswith("direct") or name.startswith("resume")
            else f"{(seconds - direct) / runs:+.2f}"
        )
        print(f"| {name:<36} | {seconds:6.1f} | {seconds / runs:9.2f} | {over:>29} |")


if __name__ == "__main__":
    main()
