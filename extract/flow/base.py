"""The optical-flow backend contract, its registry and helpers shared by the backends.

Every backend maps a batch of frame pairs ``prev, nxt`` (``uint8 [B, 3, H, W]`` RGB face crops, any
device) to ``float32 [B, 2, H, W]`` flow in pixels on the CPU: channel 0 is horizontal (x, to the
right), channel 1 vertical (y, down), and a point at ``(x, y)`` in ``prev`` moves to
``(x + u, y + v)`` in ``nxt``. The registry key is what the user types, and what the cache records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from aver.errors import ConfigError
from aver.registry import Registry
from aver.utils import autocast, sha256_file  # noqa: F401  (sha256_file: for the backends)

from ..config import FlowConfig

FLOW_BACKENDS: Registry = Registry("flow backend")


def check_pair(prev: torch.Tensor, nxt: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``prev`` and ``nxt`` are matching ``uint8 [B, 3, H, W]`` batches."""
    for label, t in (("prev", prev), ("nxt", nxt)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"flow input {label} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"flow input {label} must be uint8 [B, 3, H, W], got {t.dtype} {tuple(t.shape)}")
    if prev.shape != nxt.shape:
        raise ValueError(f"flow inputs differ in shape: prev {tuple(prev.shape)} vs nxt {tuple(nxt.shape)}")


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (all of them, trainable or not)."""
    return int(sum(p.numel() for p in module.parameters()))


def pick_variant(cfg: FlowConfig, allowed: tuple[str, ...], default: str) -> str:
    """``cfg.variant`` checked against ``allowed``; an empty variant means ``default``."""
    variant = cfg.variant or default
    if variant not in allowed:
        raise ConfigError(
            f"flow.variant {cfg.variant!r} is not valid for flow.backend={cfg.backend!r}; "
            f"choose one of: {', '.join(allowed)}"
        )
    return variant


class FlowBackend:
    """Base class: validates inputs, runs ``_flow`` under ``inference_mode``, returns float32 (on
    the CPU, or on the backend's device with ``keep_device``).

    Subclasses set ``name`` (the registry key) and ``variant`` and implement ``_flow``.
    ``amp`` enables bf16 autocast inside ``_flow`` (CUDA; the CPU too); the result is float32 either way.
    """

    name: str = ""
    variant: str = ""

    def __init__(self, device: str = "cpu", amp: bool = False) -> None:
        self.device = torch.device(device)
        self.amp = bool(amp)  # bf16 autocast on CUDA, and on the CPU when asked (runtime.amp=true)

    def __call__(self, prev: torch.Tensor, nxt: torch.Tensor, keep_device: bool = False) -> torch.Tensor:
        """Flow from ``prev`` to ``nxt``.

        Args:
            prev, nxt: ``uint8 [B, 3, H, W]`` RGB frames, on any device.
            keep_device: return the flow on the backend's device (the hot path: flow, its
                normalisation, the flow image and the encoder without a round trip to the host).
        Returns:
            ``float32 [B, 2, H, W]`` on CPU (or the backend's device), pixels; channel 0 = x
            (right), channel 1 = y (down).
        """
        check_pair(prev, nxt)
        b, _, h, w = prev.shape
        out = self.device if keep_device else torch.device("cpu")
        if b == 0:
            return torch.zeros((0, 2, h, w), dtype=torch.float32, device=out)
        with torch.inference_mode():
            flow = self._flow(prev, nxt)
        flow = flow.to(device=out, dtype=torch.float32).contiguous()
        if flow.shape != (b, 2, h, w):
            raise RuntimeError(f"{self.name} backend returned {tuple(flow.shape)}, expected {(b, 2, h, w)}")
        return flow

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision on CUDA when ``amp`` is on (``aver.utils.autocast``), else a no-op."""
        return autocast(self.device, self.amp, cpu=True)

    def provenance(self) -> dict[str, Any]:
        """What made the numbers: backend, variant, weights, weights_sha256, n_params, notes."""
        return {
            "backend": self.name,
            "variant": self.variant,
            "weights": None,
            "weights_sha256": None,
            "n_params": 0,
            "notes": "",
        }


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Slices ``[0:size], [size:2*size], ...`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
