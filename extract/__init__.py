"""aver stage one (``aver.extract``): raw audio-visual clips -> a shareable, resumable Zarr feature cache.

Needs the ``[extract]`` extra. Heavy libraries (facenet-pytorch, OpenCV, PyAV, timm, transformers)
are imported only inside the module that uses them, so importing this package is cheap. Never
imports ``aver.train``; writes caches only through ``aver.store``.

Library entry point: ``aver.extract.extract_dataset`` (what ``aver extract`` calls).
"""

from typing import Any

__all__ = ["extract_dataset"]


def __getattr__(name: str) -> Any:
    if name == "extract_dataset":
        from .api import extract_dataset

        return extract_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
