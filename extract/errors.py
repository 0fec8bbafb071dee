"""Exceptions that carry the file, the clip and the cause."""

from __future__ import annotations


class ClipError(Exception):
    """A failure confined to one clip: recorded in the cache with its cause; the run goes on.

    ``stage`` names where it happened (``decode``, ``audio``, ``faces``, ``flow``, ``encode``).
    """

    def __init__(self, path: str, cause: str, stage: str = "decode") -> None:
        self.path = str(path)
        self.cause = cause
        self.stage = stage
        super().__init__(f"{self.path}: [{stage}] {cause}")


class ConfigError(ValueError):
    """A configuration or environment problem that stops the run before any clip is touched."""


class MissingWeightsError(ConfigError):
    """A preset needs a weight file or model folder that is not available on this machine."""


class CacheMismatchError(ConfigError):
    """An existing cache was made with another configuration; results would be mixed."""
