"""``aver info``: describe a cache (base install: reads through ``aver.cache``)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from . import kv_option

    p = sub.add_parser("info", help="describe a cache (clips, status, failures, models)")
    p.add_argument("store", help="a .zarr path or fsspec URL")
    kv_option(p, "--storage-option", "fsspec storage option for the URL")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from aver.info import describe
    from aver.overrides import parse_kv

    print(describe(args.store, parse_kv(args.storage_option, "--storage-option") or None))
    return 0
