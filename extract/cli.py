"""The ``aver`` command line: ``aver extract``, ``aver demo``, ``aver info``, ``aver convert-weights``.

Only argparse is imported at the top so that ``aver --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from train.cli import parse_kv

log = logging.getLogger("aver")


def store_url(cache: str, dataset: str) -> str:
    """``<cache>/<dataset>.zarr`` for a folder or an fsspec URL (s3://bucket/prefix)."""
    return f"{cache.rstrip('/')}/{dataset}.zarr" if "://" in cache else str(Path(cache) / f"{dataset}.zarr")


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", required=True, help="dataset adapter: ravdess, cremad, mspimprov, folder, synthetic"
    )
    p.add_argument("--data", type=Path, help="raw dataset folder (synthetic: where the corpus is generated)")
    p.add_argument(
        "--cache", default="caches", help="cache folder or fsspec URL; the store is <cache>/<dataset>.zarr"
    )
    p.add_argument("--store", help="explicit store path/URL (overrides --cache)")
    p.add_argument("--preset", default="tiny", help="paper (real models) or tiny (small random models)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--labels", type=Path, help="labels CSV (mspimprov: VAVL labels; folder: the clip table)")
    p.add_argument("--folds", help="fold files: a pattern with {fold} or comma-separated VAVL partition CSVs")
    p.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter-specific option, e.g. synthetic n_actors=3 (repeatable)",
    )
    p.add_argument("--targets", default="", help="folder: comma-separated continuous target columns")
    p.add_argument(
        "--face-weights", help="EfficientNet-B2 face weights file (.safetensors, .pt state_dict, ...)"
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="permit unpickling weight files (executes code)"
    )
    p.add_argument("--audio-model", help="wav2vec2 hub id or local folder")
    p.add_argument("--audio-layers", help="comma-separated hidden-state indices, e.g. -1 or 12,18,24")
    p.add_argument("--flow", help="flow backend: dis, raft, perceiver")
    p.add_argument("--flow-variant", help="raft: large|small; dis: ultrafast|fast|medium")
    p.add_argument("--flow-weights", help="flow weights: raft file, perceiver hub id or folder")
    p.add_argument("--image-size", type=int, help="EfficientNet input size (224 as the paper, 260 native)")
    p.add_argument("--max-seconds", type=float, help="cut clips to this many seconds")
    p.add_argument("--workers", type=int, default=0, help="local Dask workers (0: this process)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option for the cache URL (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field, e.g. face.min_face_size=60 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an existing store and start over")
    p.add_argument("--retry-failed", action="store_true", help="retry clips recorded as failed")
    p.add_argument("--limit", type=int, help="process at most this many pending clips")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    """Preset, then flags, then ``--set`` overrides; validated by the dataclasses."""
    from .config import apply_overrides
    from .presets import preset_config

    cfg = preset_config(args.preset, args.dataset)
    sets = [f"runtime.device={json.dumps(args.device)}", f"runtime.workers={args.workers}"]
    if args.scheduler:
        sets.append(f"runtime.scheduler={json.dumps(args.scheduler)}")
    flag_map = {
        "face_weights": "image.weights",
        "audio_model": "audio.model",
        "flow": "flow.backend",
        "flow_variant": "flow.variant",
        "flow_weights": "flow.weights",
        "image_size": "image.input_size",
        "max_seconds": "max_seconds",
    }
    for attr, key in flag_map.items():
        value = getattr(args, attr)
        if value is not None:
            sets.append(f"{key}={json.dumps(value)}")
    if args.audio_layers:
        sets.append(f"audio.layers={json.dumps([int(v) for v in args.audio_layers.split(',')])}")
    if args.allow_pickle:
        sets += ["image.allow_pickle=true", "flow.allow_pickle=true"]
    return apply_overrides(cfg, sets + list(args.set))


def cmd_extract(args: argparse.Namespace) -> int:
    from .datasets import DatasetOptions, load_dataset
    from .pipeline import run_extraction

    _quiet_progress_bars()
    cfg = build_config(args)
    opts = DatasetOptions(
        data=args.data,
        labels=args.labels,
        folds=args.folds,
        targets=tuple(t for t in args.targets.split(",") if t),
        options=parse_kv(args.dataset_option),
    )
    index = load_dataset(args.dataset, opts)
    for note in index.notes:
        log.info("%s: %s", args.dataset, note)
    url = args.store or store_url(args.cache, args.dataset)
    log.info(
        "extracting %d clips of %s into %s (preset %s, device %s)",
        len(index.clips),
        args.dataset,
        url,
        cfg.preset,
        cfg.runtime.device,
    )
    summary = run_extraction(
        cfg,
        index,
        url,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        limit=args.limit,
        storage_options=parse_kv(args.storage_option),
        progress=not args.quiet,
    )
    print(summary.report())
    print(f"cache: {url}")
    return 0


def _quiet_progress_bars() -> None:
    """transformers draws a bar for every model load; ours (clips, frames/s) is the one to watch."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end on the embedded corpus: extract (tiny preset), describe the cache,
    train DE-III on fold 1 (tiny preset) and print the test report."""
    from train.cli import _print_report
    from train.config import preset_train_config
    from train.run import train_fold

    overrides = {
        "dataset": "synthetic",
        "cache": args.cache,
        "device": args.device,
        "data": args.data,
        "quiet": args.quiet,
    }
    cmd_extract(argparse.Namespace(**{**vars(_extract_defaults()), **overrides}))
    url = store_url(args.cache, "synthetic")
    cmd_info(argparse.Namespace(store=url))
    out = str(Path(args.runs) / "synthetic" / "de3" / "fold1")
    cfg = preset_train_config("tiny", cache=url, fold=1, out=out, device=args.device)
    metrics = train_fold(cfg)
    _print_report(metrics)
    chance = 1 / len(metrics["test_reported"]["recall"])
    print(f"chance level: {chance:.2f}; run: {cfg.out} (metrics.json, predictions.csv, plots)")
    return 0


def _extract_defaults() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    _add_extract_args(p)
    return p.parse_args(["--dataset", "synthetic"])


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe

    print(describe(args.store))
    return 0


def cmd_convert_weights(args: argparse.Namespace) -> int:
    """Re-save a weight file (e.g. a pickled Savchenko module) as safetensors, once."""
    from .encoders.weights import load_state_dict, save_safetensors, sha256_file

    sd = load_state_dict(args.src, allow_pickle=args.allow_pickle)
    save_safetensors(sd, args.dst)
    print(f"wrote {args.dst} ({len(sd)} tensors, sha256 {sha256_file(args.dst)})")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aver", description="Audio-visual emotion recognition toolkit")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract", help="extract a dataset into <cache>/<dataset>.zarr")
    _add_extract_args(p)
    p.set_defaults(func=cmd_extract)
    p = sub.add_parser("demo", help="extract the embedded synthetic corpus (tiny preset) end to end")
    p.add_argument("--cache", default="caches")
    p.add_argument("--data", type=Path, default=Path("data/synthetic"))
    p.add_argument("--runs", default="runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("info", help="describe a cache (clips, status, failures, models)")
    p.add_argument("store")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("convert-weights", help="re-save a weight file as safetensors")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument(
        "--allow-pickle", action="store_true", help="the source is a pickled module (executes code)"
    )
    p.set_defaults(func=cmd_convert_weights)
    from train.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from train.cache import CacheError
    from train.checkpoint import CheckpointError

    from .errors import ConfigError

    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ConfigError, CacheError, CheckpointError) as e:
        print(f"aver: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
