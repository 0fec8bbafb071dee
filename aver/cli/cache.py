"""``aver info`` and the ``aver cache`` tools (base install: read through ``aver.cache``)."""

from __future__ import annotations

import argparse

from aver.utils import echo


def register(sub) -> None:
    from . import kv_option

    p = sub.add_parser("info", help="describe a cache (clips, status, failures, models)")
    p.add_argument("store", help="a .zarr path or fsspec URL")
    kv_option(p, "--storage-option", "fsspec storage option for the URL")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("cache", help="cache tools: verify, pack, pull, merge, diff, export")
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    for add in (_verify_parser, _pack_parser, _pull_parser, _merge_parser, _diff_parser, _export_parser):
        add(tools)


def _tool(tools, name: str, help: str, description: str, func, quiet: bool = True):
    """One ``aver cache`` tool with the options they share (``--storage-option``, ``-q``)."""
    from . import kv_option

    t = tools.add_parser(name, help=help, description=description)
    kv_option(t, "--storage-option", "fsspec storage option for the URLs")
    if quiet:
        t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=func)
    return t


def _verify_parser(tools) -> None:
    v = _tool(
        tools,
        "verify",
        "check every committed clip against its recorded digests",
        "Recompute every committed clip's content digests and name each damaged clip and array (a "
        "flipped byte, a truncated, deleted or swapped chunk). Exit status 0: every clip verified "
        "(clips committed before aver 0.3 have no digests and are counted apart); 4: damage found.",
        cmd_verify,
    )
    v.add_argument("store", help="a .zarr path or fsspec URL")


def _pack_parser(tools) -> None:
    k = _tool(
        tools,
        "pack",
        "write a read-optimised copy for sharing (sharded, consolidated, xarray metadata)",
        "Copy STORE to DEST for sharing: the per-clip data arrays in Zarr v3 shards of --shard-clips "
        "clips, the per-clip scalars as whole arrays, consolidated metadata, xarray coordinates "
        "(clip, fold, layer) and CF-style attributes. The copy is verified against the clips' digests "
        "before it is marked complete; it is read-only (train and evaluate read it). DEST may not be STORE "
        "(by any path or URL to it), lie inside it or hold it. An interrupted pack is rerun with --overwrite.",
        cmd_pack,
    )
    k.add_argument("store", help="the working store: a .zarr path or fsspec URL")
    k.add_argument("dest", help="the packed copy: a .zarr path or fsspec URL")
    k.add_argument("--shard-clips", type=int, default=64, help="clips per shard object (default 64)")
    k.add_argument("--overwrite", action="store_true", help="replace an existing DEST")


def _pull_parser(tools) -> None:
    u = _tool(
        tools,
        "pull",
        "copy from a shared store just the clips and modalities a fold needs",
        "Copy into the local store DEST the committed clips of the chosen splits of fold K (every "
        "committed clip without --fold) and the chosen modalities, from a path or URL. Resumable "
        "(rerun to continue), verified against the clips' digests. DEST may not be the shared store (by "
        "any path to it), lie inside it or hold it.",
        cmd_pull,
    )
    u.add_argument("url", help="the shared store: a .zarr path or fsspec URL")
    u.add_argument("dest", help="a local .zarr path")
    u.add_argument("--fold", type=int, help="only the clips this fold uses")
    u.add_argument("--split", default="train,validation,test", help="splits of --fold (default: all three)")
    u.add_argument(
        "--modality",
        help="comma-separated: frames, flow, audio, inputs (crops + waveforms) (default: all the store has)",
    )


def _merge_parser(tools) -> None:
    m = _tool(
        tools,
        "merge",
        "combine stores of one dataset extracted in parts (same config hash)",
        "Write DEST with every clip committed in any of STORES (two or more working stores of one "
        "dataset, configuration and clip table; others are refused with the differences listed). A "
        "clip committed in several stores must be identical in all of them. DEST may not be one of STORES "
        "(by any path or URL to it), lie inside one or hold one.",
        _merge_args,
    )
    m.add_argument("stores", nargs="+", help="the stores to merge (paths or URLs), then DEST")
    m.add_argument("--overwrite", action="store_true", help="replace an existing DEST")


def _diff_parser(tools) -> None:
    d = _tool(
        tools,
        "diff",
        "configuration, clip-status and content differences of two stores",
        "Report how store B differs from store A. Exit status 0: no differences; 1: some.",
        cmd_diff,
        quiet=False,
    )
    d.add_argument("a")
    d.add_argument("b")


def _export_parser(tools) -> None:
    e = _tool(
        tools,
        "export",
        "write a fold's (or every clip's) features, labels and folds as one plain HDF5 file",
        "Write the committed clips of STORE (every one, or the chosen splits of fold K) to OUT as plain "
        "HDF5 datasets for MATLAB, Keras or h5py: padded float32 arrays frames [N, T, D], flow [N, P, "
        "D], audio [N, A, L, D] with their valid lengths n_frames, n_flow, n_audio; clip_id, speaker, "
        "label, label_names (targets, soft_label when the corpus has them); folds [K, N] of split codes "
        "(0 train, 1 validation, 2 test, -1 unused) and, with --fold, split [N]. Every dataset has "
        "long_name / units / dimensions attributes, the root the provenance. gzip + shuffle, chunked "
        "by clips. Clips are read in bounded batches and verified against their digests; clips not "
        "committed (pending, failed) are left out and counted.",
        cmd_export,
    )
    e.add_argument("store", help="a .zarr path or fsspec URL (working store or packed copy)")
    e.add_argument("out", help="the HDF5 file to write (its folder must exist)")
    e.add_argument("--fold", type=int, help="only the clips of fold K (1-based)")
    e.add_argument("--split", help="with --fold: comma-separated train, val, test (default: all three)")
    e.add_argument("--modality", help="comma-separated: frames, flow, audio (default: all three)")
    e.add_argument("--force", action="store_true", help="replace an existing OUT")


def cmd_export(args: argparse.Namespace) -> int:
    from aver.export import export
    from aver.overrides import parse_kv

    s = export(
        args.store,
        args.out,
        fold=args.fold,
        splits=args.split,
        modalities=args.modality,
        force=args.force,
        storage_options=parse_kv(args.storage_option, "--storage-option") or None,
        progress=not args.quiet,
    )
    what = "every committed clip" if s["fold"] is None else f"fold {s['fold']}: {', '.join(s['splits'])}"
    left = sum(s["left_out"].values())
    why = (
        f"; {left} left out, not committed: {s['left_out']['pending']} pending (not extracted yet), "
        f"{s['left_out']['failed']} failed (aver info {args.store} names the causes)"
        if left
        else "; none left out"
    )
    echo(
        f"{args.out}: {s['clips']} clips ({what}), {', '.join(s['modalities'])}; "
        f"{s['bytes'] / 1e6:.1f} MB{why}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from aver.info import describe
    from aver.overrides import parse_kv

    print(describe(args.store, parse_kv(args.storage_option, "--storage-option") or None, systems=systems()))
    return 0


def systems() -> dict[str, bool]:
    """Every registered system -> whether it trains on inputs (crops, waveforms), for ``aver info``."""
    from aver.train.system import INPUTS
    from aver.train.systems import SYSTEMS

    return {name: system.trains_on == INPUTS for name, system in SYSTEMS.items()}


def _merge_args(args: argparse.Namespace) -> int:
    from aver.errors import UserError

    if len(args.stores) < 3:
        raise UserError(
            "aver cache merge STORE STORE [STORE ...] DEST: give at least two stores and a destination"
        )
    args.stores, args.dest = args.stores[:-1], args.stores[-1]
    return cmd_merge(args)


def cmd_merge(args: argparse.Namespace) -> int:
    from aver.merge import merge
    from aver.overrides import parse_kv

    so = parse_kv(args.storage_option, "--storage-option") or None
    _check_dest(args.dest)
    s = merge(args.stores, args.dest, storage_options=so, overwrite=args.overwrite, progress=not args.quiet)
    taken = ", ".join(f"{n} from {url}" for url, n in s["from"].items())
    echo(f"{args.dest}: {s['clips']} clips ({taken})")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from aver.merge import diff
    from aver.overrides import parse_kv

    lines = diff(args.a, args.b, parse_kv(args.storage_option, "--storage-option") or None)
    for line in lines:
        echo(line)
    if not lines:
        echo("no differences: same configuration, clips and content")
    return 1 if lines else 0


def cmd_pull(args: argparse.Namespace) -> int:
    from aver.overrides import parse_kv
    from aver.pull import pull

    _check_dest(args.dest)
    s = pull(
        args.url,
        args.dest,
        fold=args.fold,
        splits=[x.strip() for x in args.split.split(",") if x.strip()],
        modalities=[x.strip() for x in (args.modality or "").split(",") if x.strip()] or None,
        storage_options=parse_kv(args.storage_option, "--storage-option") or None,
        progress=not args.quiet,
    )
    echo(
        f"{args.dest}: {s['pulled']} clips pulled and verified, {s['skipped']} already there ({s['clips']} wanted)"
    )
    return 0


def _check_dest(dest: str, zip_ok: bool = False) -> None:
    """A local DEST must be a folder that can be written (a ``.zip`` copy: a file in one)."""
    from pathlib import Path

    from aver.utils import check_out_dir

    zipped = zip_ok and dest.endswith(".zip") and "://" not in dest
    check_out_dir(Path(dest).parent if zipped else dest, "DEST" if not zipped else f"DEST {dest}: its folder")


def cmd_pack(args: argparse.Namespace) -> int:
    from aver.overrides import parse_kv
    from aver.pack import pack

    so = parse_kv(args.storage_option, "--storage-option") or None
    _check_dest(args.dest, zip_ok=True)
    s = pack(
        args.store,
        args.dest,
        shard_clips=args.shard_clips,
        storage_options=so,
        dest_options=so,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    echo(
        f"{args.dest}: {s['clips']} clips packed and verified ({s['verified']} with digests); objects "
        f"{s['objects'][0]} -> {s['objects'][1]}, {s['bytes'][0] / 1e6:.1f} -> {s['bytes'][1] / 1e6:.1f} MB"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from aver.cache import FeatureCache
    from aver.overrides import parse_kv

    cache = FeatureCache(args.store, parse_kv(args.storage_option, "--storage-option") or None)
    problems, verified, unverifiable = cache.verify(progress=not args.quiet)
    for p in problems:
        echo(p)
    damaged = len({p.clip for p in problems if not p.table})
    table = [p.array for p in problems if p.table]
    echo(
        f"{args.store}: {verified} clips verified, {damaged} damaged"
        + (f"; the clip table is damaged ({', '.join(table)})" if table else "")
        + (f", {unverifiable} without digests (committed before aver 0.3)" if unverifiable else "")
    )
    return 4 if problems else 0
