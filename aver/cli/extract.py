"""``aver extract`` and ``aver convert-weights`` (stage one; needs the ``[extract]`` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aver.utils import echo

# CLI flag -> config field it overrides (the same as ``--set field=value``).
FLAG_FIELDS = {
    "device": "runtime.device",
    "workers": "runtime.workers",
    "scheduler": "runtime.scheduler",
    "face_weights": "image.weights",
    "audio_model": "audio.model",
    "flow": "flow.backend",
    "flow_variant": "flow.variant",
    "flow_weights": "flow.weights",
    "image_size": "image.input_size",
    "max_seconds": "max_seconds",
    "crop_frames": "inputs.crop_frames",
    "crop_size": "inputs.crop_size",
}


def register(sub) -> None:
    p = sub.add_parser("extract", help="extract a dataset into <cache>/<dataset>.zarr")
    _data_args(p.add_argument_group("dataset and cache"))
    _model_args(p.add_argument_group("models and weights"))
    _run_args(p.add_argument_group("run"))
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "convert-weights", help="re-save a weight file as safetensors (once, with --allow-pickle)"
    )
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument(
        "--allow-pickle", action="store_true", help="the source is a pickled module (executes code)"
    )
    p.set_defaults(func=cmd_convert_weights)


def _data_args(p: argparse.ArgumentParser) -> None:
    """What to extract and where to: dataset, raw data, labels, folds, the cache."""
    from . import choice_option, kv_option

    choice_option(
        p, "--dataset", "aver.extract.datasets", "DATASETS", "dataset adapter: %(choices)s", required=True
    )
    p.add_argument("--data", type=Path, help="raw dataset folder (synthetic: where the corpus is generated)")
    p.add_argument(
        "--cache", default="caches", help="cache folder or fsspec URL; the store is <cache>/<dataset>.zarr"
    )
    p.add_argument("--store", help="explicit store path/URL (overrides --cache)")
    choice_option(
        p,
        "--preset",
        "aver.extract.presets",
        "PRESETS",
        "extraction preset (%(choices)s): paper = the real models (default); tiny = small random models, tests and demo only",
        default="paper",
    )
    p.add_argument("--labels", type=Path, help="labels CSV (mspimprov: VAVL labels; folder: the clip table)")
    p.add_argument(
        "--fold-files", help="VAVL partition CSVs: a pattern with {fold} or a comma-separated list"
    )
    choice_option(
        p,
        "--protocol",
        "aver.folds",
        "PROTOCOLS",
        "store a named fold protocol instead of the corpus's folds: %(choices)s (training can also "
        "choose one: aver train --protocol)",
    )
    kv_option(p, "--dataset-option", "adapter-specific option, e.g. synthetic n_actors=3")
    p.add_argument("--targets", default="", help="folder: comma-separated continuous target columns")


def _model_args(p: argparse.ArgumentParser) -> None:
    """The models and their weights (each flag is a shorthand for one ``--set`` field)."""
    from . import choice_option

    p.add_argument(
        "--face-weights", help="EfficientNet-B2 face weights file (.safetensors, .pt state_dict, ...)"
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="permit unpickling weight files (executes code)"
    )
    p.add_argument("--audio-model", help="wav2vec2 hub id or local folder")
    p.add_argument("--audio-layers", help="comma-separated hidden-state indices, e.g. -1 or 12,18,24")
    choice_option(p, "--flow", "aver.extract.flow", "FLOW_BACKENDS", "flow backend: %(choices)s")
    p.add_argument("--flow-variant", help="raft: large|small; dis: ultrafast|fast|medium")
    p.add_argument("--flow-weights", help="flow weights: raft file, perceiver hub id or folder")
    p.add_argument("--image-size", type=int, help="EfficientNet input size (224 as the paper, 260 native)")
    p.add_argument("--max-seconds", type=float, help="cut clips to this many seconds")
    p.add_argument(
        "--inputs",
        metavar="KINDS",
        help="also store end-to-end inputs for mocanu2023 / avtca: crops,wave (added to a finished "
        "store without recomputing features; bench/RESULTS.md gives the size of each choice)",
    )
    p.add_argument("--crop-frames", type=int, help="crops kept per clip, uniformly sampled (0: every frame)")
    p.add_argument("--crop-size", type=int, help="side of the stored crops in pixels (default 112)")


def _run_args(p: argparse.ArgumentParser) -> None:
    """How the run executes: device, workers, storage, overrides, resumption."""
    from . import kv_option, set_option

    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--workers", type=int, help="local Dask workers (0: this process)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler")
    kv_option(p, "--storage-option", "fsspec storage option for the cache URL")
    set_option(p, "face.min_face_size=60")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store and start over")
    p.add_argument("--retry-failed", action="store_true", help="retry clips recorded as failed")
    p.add_argument("--limit", type=int, help="process at most this many pending clips")


def overrides_from_flags(args: argparse.Namespace) -> list[str]:
    """The flags as ``field=value`` overrides, then ``--set`` (which wins)."""
    from . import flag_overrides

    sets = flag_overrides(args, FLAG_FIELDS)
    if args.audio_layers:
        sets.append(f"audio.layers={json.dumps([int(v) for v in args.audio_layers.split(',')])}")
    if args.allow_pickle:
        sets += ["image.allow_pickle=true", "flow.allow_pickle=true"]
    if args.inputs:
        kinds = [k.strip() for k in args.inputs.split(",") if k.strip()]
        bad = [k for k in kinds if k not in ("crops", "wave")]
        if bad:
            from aver.errors import ConfigError

            raise ConfigError(f"--inputs {args.inputs!r}: choose from crops, wave (comma-separated)")
        sets += [f"inputs.{k}=true" for k in kinds]
    return sets + list(args.set)


def cmd_extract(args: argparse.Namespace) -> int:
    from aver.extract.api import extract_dataset
    from aver.overrides import parse_kv

    summary = extract_dataset(
        args.dataset,
        data=args.data,
        cache=args.cache,
        store=args.store,
        preset=args.preset,
        overrides=overrides_from_flags(args),
        labels=args.labels,
        folds=args.fold_files,
        protocol=args.protocol,
        targets=tuple(t for t in args.targets.split(",") if t),
        dataset_options=parse_kv(args.dataset_option, "--dataset-option"),
        storage_options=parse_kv(args.storage_option, "--storage-option"),
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        limit=args.limit,
        progress=not args.quiet,
    )
    print(summary.report())  # one line per clip, its text escaped
    echo(f"cache: {summary.store}")
    if summary.all_failed():
        from aver.errors import CacheError

        # exit 4 (a cache without what was asked for): what `aver train` on this store would report
        raise CacheError(
            f"every one of the {summary.failed} clips failed, so {summary.store} holds no features; most "
            f"common cause: {summary.common_cause()}. Fix that and rerun the command with --retry-failed"
        )
    return 0


def cmd_convert_weights(args: argparse.Namespace) -> int:
    """Re-save a weight file (e.g. a pickled Savchenko module) as safetensors, once."""
    from aver.extract.encoders.weights import load_state_dict, save_safetensors

    sd = load_state_dict(args.src, allow_pickle=args.allow_pickle)
    sha = save_safetensors(sd, args.dst)
    echo(f"wrote {args.dst} ({len(sd)} tensors, sha256 {sha})")
    return 0
