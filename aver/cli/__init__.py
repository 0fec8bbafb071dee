"""The ``aver`` command line: a thin shell over the library, one module per group of sub-commands.

``main`` is the one place where errors become exit codes: a ``UserError`` prints one line naming
the problem and the fix (``-v`` adds the traceback); so does a file the OS refused (the path and
the cause) or cloud storage without credentials; anything else is a bug and shows the traceback.
Every line printed, errors and log lines included, shows control characters escaped.
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
    handler = logging.StreamHandler()
    from aver.utils import InertFormatter

    handler.setFormatter(InertFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is found here, not at exit
        return code
    except AverError as e:
        return _error(args, str(e), e.exit_code)
    except KeyboardInterrupt:
        print("aver: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `aver variants | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as e:
        known = environment_error(e, args)
        if known is None:
            raise
        return _error(args, known, 2)


def _error(args: argparse.Namespace, message: str, code: int) -> int:
    """Print ``message`` as the one line ``aver: error: ...`` (``-v``: after the traceback)."""
    from aver.utils import for_terminal

    if args.verbose:
        traceback.print_exc()
    print(f"aver: error: {for_terminal(message)}", file=sys.stderr)
    return code


def environment_error(e: Exception, args: argparse.Namespace) -> str | None:
    """The one line for a failure of the machine or the storage rather than of aver: a file the OS
    refused (it names the path and the cause) or cloud storage without credentials. ``None``: a bug,
    which keeps its traceback."""
    if isinstance(e, OSError) and e.filename is not None:
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        cause = e.strerror or type(e).__name__
        return f"{where}: {cause} ({type(e).__name__}); check the path and its permissions (-v: traceback)"
    if type(e).__name__ == "NoCredentialsError" and type(e).__module__.startswith("botocore"):
        urls = sorted({v for v in vars(args).values() if isinstance(v, str) and "://" in v})
        return (
            f"{', '.join(urls) or 'the s3:// URL'}: no cloud credentials found (botocore: {e}): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or pass --storage-option "
            "anon=true for a public bucket"
        )
    return None


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
