"""Frozen feature encoders: a timm image backbone and a wav2vec2 audio model.

Exports are resolved lazily so that ``import aver.extract.encoders.weights`` (used by
``aver convert-weights``) does not pull in timm or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audio import AudioEncoder
    from .image import ImageEncoder
    from .weights import load_state_dict, save_safetensors, sha256_file

__all__ = ["AudioEncoder", "ImageEncoder", "load_state_dict", "save_safetensors", "sha256_file"]

_WHERE = {
    "AudioEncoder": ".audio",
    "ImageEncoder": ".image",
    "load_state_dict": ".weights",
    "save_safetensors": ".weights",
    "sha256_file": ".weights",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name], __name__), name)
