"""``aver info`` and ``aver cache verify`` (base install: read through ``aver.cache``)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from . import kv_option

    p = sub.add_parser("info", help="describe a cache (clips, status, failures, models)")
    p.add_argument("store", help="a .zarr path or fsspec URL")
    kv_option(p, "--storage-option", "fsspec storage option for the URL")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("cache", help="cache tools: verify")
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


def cmd_info(args: argparse.Namespace) -> int:
    from aver.info import describe
    from aver.overrides import parse_kv

    print(describe(args.store, parse_kv(args.storage_option, "--storage-option") or None))
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
