"""``aver demo``: the main job end to end on the embedded synthetic corpus (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="extract the embedded corpus (tiny preset), train DE-III on fold 1, report"
    )
    p.add_argument("--cache", default="caches")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--runs", default="runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from aver.extract.api import extract_dataset
    from aver.info import describe
    from aver.train.api import train_fold

    from .train import print_report

    summary = extract_dataset(
        "synthetic",
        data=args.data,
        cache=args.cache,
        preset="tiny",
        overrides={"runtime.device": args.device},
        progress=not args.quiet,
    )
    print(summary.report())
    print(describe(summary.store))
    out = str(Path(args.runs) / "synthetic" / "de3" / "fold1")
    metrics = train_fold(
        summary.store, 1, preset="tiny", out=out, device=args.device, progress=not args.quiet
    )
    print_report(metrics)
    chance = 1 / len(metrics["test_reported"]["recall"])
    print(f"chance level: {chance:.2f}; run: {out} (metrics.json, predictions.csv, plots)")
    from aver.train.paper import write_report

    print(f"report: {write_report(args.runs)}")
    return 0
