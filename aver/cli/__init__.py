"""The ``aver`` command line: a thin shell over the library, one module per group of sub-commands.

``main`` is the one place where errors become exit codes: a ``UserError`` prints one line naming
the problem and the fix (``-v`` adds the traceback); anything else is a bug and shows the traceback.
Only argparse is imported up front, so ``aver --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from aver import __version__
from aver.errors import EXIT_CODES, AverError

from . import cache, demo, extract, qa, train

COMMANDS = (extract, train, cache, qa, demo)


def make_parser() -> argparse.ArgumentParser:
    epilog = "exit status: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="aver",
        description="Audio-visual emotion recognition: extract a feature cache, train on it.",
        epilog=epilog,
    )
    parser.add_argument("--version", action="version", version=f"aver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except AverError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"aver: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("aver: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `aver variants | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def kv_option(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A repeatable ``KEY=VALUE`` option."""
    p.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=help + " (repeatable)")


def set_option(p: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE``: the one override syntax of every config (``aver.overrides``)."""
    kv_option(p, "--set", f"override any config field by its dotted path, e.g. {example}")


def choice_option(
    p, flag: str, module: str, registry: str, help: str, extra: tuple[str, ...] = (), **kw
) -> None:
    """An option whose value must be a name in ``module.registry`` (imported only when checked);
    ``%(choices)s`` in ``help`` lists them."""
    from aver.registry import LazyChoices

    p.add_argument(flag, metavar="NAME", choices=LazyChoices(module, registry, extra), help=help, **kw)


def flag_overrides(args, fields: dict[str, str]) -> list[str]:
    """Convenience flags as ``--set`` overrides: ``{attr: "dotted.field"}`` for every flag given."""
    import json

    return [
        f"{key}={json.dumps(getattr(args, attr))}"
        for attr, key in fields.items()
        if getattr(args, attr) is not None
    ]
