"""``aver demo``: the main job end to end on the embedded synthetic corpus (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aver.utils import echo


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="extract the embedded corpus (tiny preset), train a system on fold 1, report"
    )
    from . import choice_option

    choice_option(
        p,
        "--model",
        "aver.train.systems",
        "SYSTEMS",
        "the system to train, %(choices)s (default %(default)s; all: every system, side by side in "
        "the report)",
        extra=("all",),
        default="de3",
    )
    p.add_argument("--cache", default="caches")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--runs", default="runs")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from aver.errors import require_modules
    from aver.extract.api import EXTRACT_MODULES, extract_dataset

    require_modules("extract", EXTRACT_MODULES, "aver demo")  # named as the command the user ran
    from aver.info import describe
    from aver.train.api import train_fold

    from .train import print_report

    summary = extract_dataset(
        "synthetic",
        data=args.data,
        cache=args.cache,
        preset="tiny",
        # with crops and waveforms, so the same cache trains all three systems
        overrides={
            "runtime.device": args.device,
            "inputs.crops": True,
            "inputs.crop_frames": 16,
            "inputs.crop_size": 64,
            "inputs.wave": True,
        },
        progress=not args.quiet,
    )
    print(summary.report())
    from .cache import systems

    print(describe(summary.store, systems=systems()))
    from aver.train.api import default_out
    from aver.train.systems import SYSTEMS

    for system in SYSTEMS.names() if args.model == "all" else [args.model]:
        variant = SYSTEMS.get(system).default_variant
        out = str(Path(default_out(summary.store, variant, system, runs=args.runs)) / "fold1")
        metrics = train_fold(
            summary.store,
            1,
            preset="tiny",
            out=out,
            device=args.device,
            progress=not args.quiet,
            system=system,
        )
        print_report(metrics)
        chance = 1 / len(metrics["test_reported"]["recall"])
        echo(f"chance level: {chance:.2f}; run: {out} (metrics.json, predictions.csv, plots)")
    _predict_unseen(args, out)
    from aver.train.paper import write_report

    echo(f"report: {write_report(args.runs)}")
    return 0


def _predict_unseen(args: argparse.Namespace, run: str) -> None:
    """``aver predict`` with the last run on a video of a face the corpus never shows."""
    from aver.apps.prediction import predict
    from aver.extract.synthetic import write_photo_clip

    video = write_photo_clip(Path(args.data).parent / "unseen" / "grace_hopper.mp4", emotion="happy")
    row = predict(run, [video], device=args.device)[0]
    if row["status"] != "ok":
        echo(f"predict {video}: {row['error']}")
        return
    head = row["head"]
    probs = "  ".join(f"{k[len(head) + 1 :]} {v:.2f}" for k, v in row.items() if k.startswith(f"{head}_"))
    echo(f"aver predict {run} {video}: {row['prediction']} ({head} head: {probs})")
