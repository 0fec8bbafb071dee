"""``aver info`` and ``aver cache verify`` (base install: read through ``aver.cache``)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from . import kv_option

    p = sub.add_parser("info", help="describe a cache (clips, status, failures, models)")
    p.add_argument("store", help="a .zarr path or fsspec URL")
    kv_option(p, "--storage-option", "fsspec storage option for the URL")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("cache", help="cache tools: verify, pack")
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    v = tools.add_parser(
        "verify",
        help="check every committed clip against its recorded digests",
        description="Recompute every committed clip's content digests and name each damaged clip and "
        "array (a flipped byte, a truncated, deleted or swapped chunk). Exit status 0: every clip "
        "verified (clips committed before aver 0.3 have no digests and are counted apart); 4: damage found.",
    )
    v.add_argument("store", help="a .zarr path or fsspec URL")
    kv_option(v, "--storage-option", "fsspec storage option for the URL")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_verify)

    k = tools.add_parser(
        "pack",
        help="write a read-optimised copy for sharing (sharded, consolidated, xarray metadata)",
        description="Copy STORE to DEST for sharing: the per-clip data arrays in Zarr v3 shards of "
        "--shard-clips clips, the per-clip scalars as whole arrays, consolidated metadata, xarray "
        "coordinates (clip, fold, layer) and CF-style attributes. The copy is verified against the "
        "clips' digests before it is marked complete; it is read-only (train and evaluate read it).",
    )
    k.add_argument("store", help="the working store: a .zarr path or fsspec URL")
    k.add_argument("dest", help="the packed copy: a .zarr path or fsspec URL")
    k.add_argument("--shard-clips", type=int, default=64, help="clips per shard object (default 64)")
    kv_option(k, "--storage-option", "fsspec storage option for both URLs")
    k.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    k.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    k.set_defaults(func=cmd_pack)


def cmd_info(args: argparse.Namespace) -> int:
    from aver.info import describe
    from aver.overrides import parse_kv

    print(describe(args.store, parse_kv(args.storage_option, "--storage-option") or None))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from aver.overrides import parse_kv
    from aver.pack import pack

    so = parse_kv(args.storage_option, "--storage-option") or None
    s = pack(
        args.store,
        args.dest,
        shard_clips=args.shard_clips,
        storage_options=so,
        dest_options=so,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"{args.dest}: {s['clips']} clips packed and verified ({s['verified']} with digests); objects "
        f"{s['objects'][0]} -> {s['objects'][1]}, {s['bytes'][0] / 1e6:.1f} -> {s['bytes'][1] / 1e6:.1f} MB"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from aver.cache import FeatureCache
    from aver.overrides import parse_kv
    from aver.utils import printable

    cache = FeatureCache(args.store, parse_kv(args.storage_option, "--storage-option") or None)
    problems, verified, unverifiable = cache.verify(progress=not args.quiet)
    for p in problems:
        print(printable(str(p)))
    damaged = len({p.clip for p in problems})
    print(
        f"{args.store}: {verified} clips verified, {damaged} damaged"
        + (f", {unverifiable} without digests (committed before aver 0.3)" if unverifiable else "")
    )
    return 4 if problems else 0
