"""``aver train``, ``aver cv`` and ``aver evaluate`` (registered into the ``aver`` command).

Imports nothing heavy at module level, and nothing from ``extract``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("train")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", required=True, help="the dataset's store: a .zarr path or fsspec URL")
    p.add_argument("--out", default=None, help="run directory (default runs/<dataset>/<variant>[/fold<k>])")
    p.add_argument("--variant", default="de3", help="model variant (see `aver variants`)")
    p.add_argument("--preset", default="paper", help="paper (the paper's hyper-parameters) or tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--head", choices=["best", "video", "audio", "fusion"])
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")


def parse_kv(items: list[str]) -> dict:
    """``KEY=VALUE`` flags to a dict; values parsed as JSON when they are JSON, else kept as strings."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace, fold: int):
    from .config import preset_train_config

    out = args.out or str(Path("runs") / Path(args.cache.rstrip("/")).stem / args.variant)
    data = {"batch_size": args.batch_size} if args.batch_size else None
    return preset_train_config(
        args.preset,
        cache=args.cache,
        fold=fold,
        out=out,
        variant=args.variant,
        device=args.device,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        head=args.head,
        resume=not args.no_resume,
        data=data,
        model=parse_kv(args.model) or None,
        storage_options=parse_kv(args.storage_option) or None,
    )


def _print_report(metrics: dict) -> None:
    head, test = metrics["reported_head"], metrics["test_reported"]
    scalars = {k: round(v, 4) for k, v in test.items() if isinstance(v, float)}
    print(
        f"fold {metrics['fold']} | variant {metrics['variant']} | reported head: {head} (best on validation)"
    )
    print("test: " + "  ".join(f"{k} {v}" for k, v in scalars.items()))
    if "recall" in test:
        print("recall per class: " + "  ".join(f"{k} {v:.2f}" for k, v in test["recall"].items()))


def cmd_train(args: argparse.Namespace) -> int:
    from .run import train_fold

    cfg = config_from_args(args, args.fold)
    if not args.out:
        cfg.out = str(Path(cfg.out) / f"fold{args.fold}")
    metrics = train_fold(cfg)
    _print_report(metrics)
    print(f"run: {cfg.out}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from .run import cross_validate

    cfg = config_from_args(args, 1)
    folds = [int(k) for k in args.folds.split(",")] if args.folds else None
    summary = cross_validate(cfg, folds)
    print(
        f"{'metric':16} {'mean':>8} {'std':>8}  (test, reported head, {next(iter(summary.values()))['n']} folds)"
    )
    for k, v in summary.items():
        print(f"{k:16} {v['mean']:8.4f} {v['std']:8.4f}")
    print(f"runs: {cfg.out}")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from .models.variants import VARIANTS

    for name in sorted(VARIANTS):
        doc = (VARIANTS[name].__doc__ or "").strip().splitlines()
        print(f"{name:18} {doc[0] if doc else ''}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .run import evaluate_run

    metrics = evaluate_run(args.run, args.cache, parse_kv(args.storage_option) or None)
    _print_report(metrics)
    return 0


def add_commands(sub) -> None:
    """Register the stage-two sub-commands on the ``aver`` parser."""
    p = sub.add_parser("train", help="train one fold on a cache")
    _common(p)
    p.add_argument("--fold", type=int, default=1)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("cv", help="train every fold, then mean ± std across folds")
    _common(p)
    p.add_argument("--folds", help="comma-separated folds (default: all)")
    p.set_defaults(func=cmd_cv)
    p = sub.add_parser("variants", help="list the model variants (the paper's ablations)")
    p.set_defaults(func=cmd_variants)
    p = sub.add_parser("evaluate", help="re-score a run on a cache (refuses another cache)")
    p.add_argument("--run", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_evaluate)
