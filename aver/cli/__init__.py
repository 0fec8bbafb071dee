"""The ``aver`` command line: a thin shell over the library, one module per group of sub-commands.

``main`` is the one place where errors become exit codes: a ``UserError`` prints one line naming
the problem and the fix (``-v`` adds the traceback); so does a file the OS refused (the path and
the cause) or cloud storage without credentials; anything else is a bug and shows the traceback.
Every line printed, errors and log lines included, shows control characters escaped.
``-v`` / ``-q`` are taken before or after the command; logging is set up here once for every
command (``_console``): log lines go through ``tqdm.write``, above a live progress bar, and ``-q``
leaves warnings and errors only, with no progress bars.
Only argparse is imported up front, so ``aver --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
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
    for flags, help in SHARED_FLAGS.items():
        parser.add_argument(*flags, action="store_true", help=help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    _share_flags(parser)
    return parser


# The flags every command takes, before or after its name (``aver -v info X`` = ``aver info X -v``).
SHARED_FLAGS = {
    ("-v", "--verbose"): "debug logging; tracebacks on errors",
    ("-q", "--quiet"): "no progress bars and no INFO log lines (warnings and errors still shown)",
}


def _share_flags(parser: argparse.ArgumentParser) -> None:
    """Give every sub-command (at any depth) the ``SHARED_FLAGS``, defaulting to ``SUPPRESS``: a
    sub-parser copies its defaults over the namespace of the parser above it, so only a flag given
    after the command may set the attribute, and one given before it is kept (a command that
    declares ``-q`` itself gets the same default)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in dict.fromkeys(action.choices.values()):  # aliases name one parser twice
            own = {s: a for a in child._actions for s in a.option_strings}
            for flags, help in SHARED_FLAGS.items():
                if flags[0] in own:
                    own[flags[0]].default = argparse.SUPPRESS
                else:
                    child.add_argument(*flags, action="store_true", default=argparse.SUPPRESS, help=help)
            _share_flags(child)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        with _console(args):
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe is found here, not at exit
        return code
    except AverError as e:
        return _error(args, str(e), e.exit_code)
    except KeyboardInterrupt:
        print("aver: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `aver variants | head -1`: the reader stopped reading, by choice; nothing failed. Exit 0,
        # not 141 (128 + SIGPIPE, what `yes | head -1` reports): the commands print their results
        # after the work they report is written, and 141 would fail a `set -o pipefail` script that
        # asked for one line.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as e:
        known = environment_error(e, args)
        if known is None:
            raise
        return _error(args, known, 2)


class _TqdmHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``: a live progress bar is cleared, the log
    line printed above it and the bar redrawn, instead of the line landing in the middle of it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


@contextlib.contextmanager
def _console(args: argparse.Namespace):
    """Logging and progress bars for one command, set up once here for every command: log lines
    through ``tqdm.write`` (``_TqdmHandler``), INFO and up (``-v``: DEBUG; ``-q``: WARNING and up,
    and third-party progress bars off: ``TQDM_DISABLE``, ``HF_HUB_DISABLE_PROGRESS_BARS``, read
    by tqdm and huggingface_hub when first imported); matplotlib's own INFO/DEBUG never shown.
    Undone on exit, so ``main`` can be called again in the same process."""
    import os

    from aver.utils import InertFormatter

    root, mpl = logging.getLogger(), logging.getLogger("matplotlib")
    saved = root.level, mpl.level, {k: os.environ.get(k) for k in QUIET_ENV}
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = None
    if not root.handlers:  # as logging.basicConfig: an application's own logging is kept
        handler = _TqdmHandler()
        handler.setFormatter(InertFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)  # also for loggers with their own level (aver.train: INFO, for train.log)
        root.addHandler(handler)
    root.setLevel(level)
    mpl.setLevel(logging.WARNING)
    if args.quiet:
        os.environ.update(QUIET_ENV)
    try:
        yield
    finally:
        root.setLevel(saved[0])
        mpl.setLevel(saved[1])
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if handler is not None:
            root.removeHandler(handler)


# With -q: the progress bars of libraries (tqdm bars made without an explicit ``disable``, such as
# transformers' "Loading weights", and the Hugging Face hub's) are off too; aver's own follow -q.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


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
