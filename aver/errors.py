"""One error hierarchy for the whole toolkit, and the exit code of each kind.

A ``UserError`` is something the user can fix: the command line prints its message as one line
(never a traceback; ``-v`` shows it) and exits with ``exit_code``. ``ClipError`` is different: it is
confined to one clip, recorded in the cache with its cause, and the run goes on.
"""

from __future__ import annotations


class AverError(Exception):
    """Base of every error aver raises on purpose."""

    exit_code = 1


class UserError(AverError):
    """A problem the user can fix; the message names it and says what to do."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration or environment problem that stops the run before any work is done."""


class MissingWeightsError(ConfigError):
    """A preset needs a weight file or model folder that is not available on this machine."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency group is not installed; the message names the ``pip install``."""

    exit_code = 3


class CacheError(UserError, ValueError):
    """A cache is missing, of an unsupported layout, inconsistent, or lacks what was asked for."""

    exit_code = 4


class CacheMismatchError(CacheError, ConfigError):
    """An existing cache was made with another configuration or clip list: results would be mixed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or run folder that does not fit the cache or configuration it is used with."""

    exit_code = 5


class TrainingError(UserError):
    """Training cannot go on: a non-finite loss (the message names the batch's clips)."""

    exit_code = 6


class RunsFailed(UserError):
    """Some runs of a sweep or cross-validation failed; the others completed (the summary names
    each failure and its cause, and the same command retries them)."""

    exit_code = 8


class ClipError(AverError):
    """A failure confined to one clip: recorded in the cache with its cause; the run goes on.

    ``stage`` names where it happened (``decode``, ``audio``, ``faces``, ``flow``, ``encode``).
    """

    def __init__(self, path: str, cause: str, stage: str = "decode") -> None:
        self.path = str(path)
        self.cause = cause
        self.stage = stage
        super().__init__(f"{self.path}: [{stage}] {cause}")


# For the README and ``aver --help``: what each exit status means.
EXIT_CODES = {
    0: "success",
    1: "an unexpected error (a bug: rerun with -v and report the traceback)",
    2: "a user error: bad flag, value, path or configuration",
    3: "a missing optional dependency (the message names the pip install)",
    4: "a cache that is missing, inconsistent or not the one expected",
    5: "a checkpoint or run folder that does not fit",
    6: "training stopped: a non-finite loss",
    7: "the store is being written by another run",
    8: "some runs of a sweep or cross-validation failed (each named with its cause; the others completed)",
    130: "interrupted",
}


def require_modules(extra: str, modules: tuple[str, ...], command: str) -> None:
    """Raise ``MissingExtraError`` naming the install command unless every module imports."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        hint = f"pip install 'aver[{extra}]'"
        if extra == "extract":
            hint += " && pip install --no-deps facenet-pytorch==2.6.0"
        raise MissingExtraError(
            f"{command} needs the [{extra}] extra ({', '.join(missing)} not installed): {hint}"
        )
