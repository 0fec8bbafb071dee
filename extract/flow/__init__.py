"""Optical flow between face crops: backends (registry ``FLOW_BACKENDS``), normalisation, flow images.

Importing this package registers every backend; OpenCV, torchvision and transformers are imported
only when a backend is built.
"""

from __future__ import annotations

from typing import Any

from ..config import FlowConfig
from . import classical, perceiver, raft  # noqa: F401  (registration side effect)
from .base import FLOW_BACKENDS, FlowBackend
from .normalise import FlowSigma, apply_sigma, flow_pairs, flow_to_image, normalise_flow

__all__ = [
    "FLOW_BACKENDS",
    "FlowSigma",
    "apply_sigma",
    "FlowBackend",
    "build_flow_backend",
    "flow_pairs",
    "flow_to_image",
    "normalise_flow",
]


def build_flow_backend(cfg: FlowConfig, device: str, **options: Any) -> FlowBackend:
    """The backend named by ``cfg.backend``, built for ``device``.

    ``options`` go to the backend's constructor (all have defaults): ``amp`` (CUDA autocast,
    default off), and for ``perceiver`` also ``config`` and ``max_tiles``.
    Raises ``ValueError`` for an unknown name, ``ConfigError`` / ``MissingWeightsError`` for setup problems.
    """
    return FLOW_BACKENDS.get(cfg.backend)(cfg, device, **options)
