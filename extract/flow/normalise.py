"""DE-III flow normalisation, the colour-wheel flow image and the frame-pair schedule.

DE-III divides flow "by a standard deviation calculated from the local optical flow magnitude at
every pixel position within an entire video clip". Two readings (``flow.sigma``):

- ``clip`` (default, the design card's "per-clip std"): one sigma over every pixel of every flow map
  of the clip. Static background noise stays dark and face motion bright.
- ``pixel``: one sigma per pixel position, taken over time. It makes a pixel that barely moves (tiny
  background noise) as bright as real face motion, since each pixel is scaled by its own spread.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def _check_flow(flow: torch.Tensor, label: str) -> torch.Tensor:
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{label} must be a float tensor [T, 2, H, W], got {shape}")
    if not flow.is_floating_point():
        raise ValueError(f"{label} must be floating point, got {flow.dtype}")
    return flow.float()


SIGMA_MODES = ("clip", "pixel")


class FlowSigma:
    """DE-III's sigma (``mode`` = ``clip`` or ``pixel``), accumulated over a clip's flow maps window by window.

    Two passes (``add_mean`` over every window, then ``add_var`` over every window) in float64, so
    a clip processed in windows of any size (a long clip streamed through bounded memory) gets the
    sigma that one pass over the whole clip would give, up to float64 rounding.
    """

    def __init__(self, mode: str = "clip") -> None:
        if mode not in SIGMA_MODES:
            raise ValueError(f"flow sigma mode must be one of {SIGMA_MODES}, not {mode!r}")
        self.mode = mode
        self.n = 0
        self._sum: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None

    @staticmethod
    def _magnitude(flow: torch.Tensor) -> torch.Tensor:
        # hypot, not linalg.vector_norm(dim=1): the strided 2-element reduction is ~50x slower on CPU
        flow = _check_flow(flow, "flow")
        return torch.hypot(flow[:, 0], flow[:, 1]).double()  # [T, H, W]

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(0) if self.mode == "pixel" else x.sum()

    def add_mean(self, flow: torch.Tensor) -> None:
        m = self._magnitude(flow)
        self._sum = self._reduce(m) if self._sum is None else self._sum + self._reduce(m)
        self.n += m.shape[0] if self.mode == "pixel" else m.numel()

    def add_var(self, flow: torch.Tensor) -> None:
        if self._sum is None:
            raise RuntimeError("FlowSigma.add_var before any add_mean")
        d = self._magnitude(flow) - self._sum / self.n
        self._sq = self._reduce(d * d) if self._sq is None else self._sq + self._reduce(d * d)

    def sigma(self) -> torch.Tensor:
        """Population std (ddof = 0) of the flow magnitude: ``float32 [H, W]`` over time (``pixel``)
        or a ``float32`` scalar over all pixels and frames (``clip``)."""
        if self._sq is None:
            raise RuntimeError("FlowSigma.sigma before add_var")
        return (self._sq / self.n).sqrt().float()


def apply_sigma(flow: torch.Tensor, sigma: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``flow / (sigma + eps)``; ``sigma=None`` (a clip with one flow map) divides by ``1 + eps``."""
    flow = _check_flow(flow, "flow")
    if sigma is None:
        return flow / (1.0 + eps)
    return flow / (sigma.to(flow.device) + eps)


def normalise_flow(flow: torch.Tensor, eps: float, mode: str = "clip") -> torch.Tensor:
    """DE-III's std normalisation of a clip's flow (``mode``: see the module docstring).

    ``clip``: sigma is the population std (ddof = 0) of ``|flow_t[y, x]|`` over every t, y, x.
    ``pixel``: ``sigma[y, x]`` is the population std over t of ``|flow_t[y, x]|``; a pixel whose
    magnitude never changes is scaled by ``1 / eps`` (the flow image clips it), and with a single
    flow map (T == 1), where no std over time exists, the map is divided by ``1 + eps``.
    Both components are divided by ``sigma + eps``. The same arithmetic as a long clip's windowed
    path (``FlowSigma``, ``apply_sigma``).

    Args:
        flow: ``float32 [T, 2, H, W]`` flow in pixels, T >= 1.
        eps: > 0, added to sigma (pixels).
        mode: ``clip`` or ``pixel``.
    Returns:
        ``float32 [T, 2, H, W]``, dimensionless.
    """
    flow = _check_flow(flow, "flow")
    if flow.shape[0] == 0:
        raise ValueError("normalise_flow needs at least one flow map (T == 0)")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    stats = FlowSigma(mode)
    if flow.shape[0] == 1 and mode == "pixel":
        log.warning("normalise_flow: one flow map only; no temporal std, dividing by 1 + eps instead")
        return apply_sigma(flow, None, eps)
    stats.add_mean(flow)
    stats.add_var(flow)
    return apply_sigma(flow, stats.sigma(), eps)


def flow_to_image(flow_norm: torch.Tensor, clip: float) -> torch.Tensor:
    """Colour-wheel (HSV) image of flow, the input the flow encoder sees.

    Hue is the direction ``atan2(v, u)`` in image axes (x right, y down), measured clockwise on
    screen: 0 (rightward) = red, +pi/2 (downward) = yellow-green (90 deg), pi (leftward) = cyan,
    -pi/2 (upward) = violet (270 deg) -- the same wheel as OpenCV's usual
    ``cartToPolar`` + ``HSV2RGB`` display. Saturation is 1; value is ``min(1, |flow| / clip)``, so zero
    flow is black and magnitudes >= ``clip`` are at full brightness.

    Args:
        flow_norm: ``float32 [T, 2, H, W]`` (normalised) flow.
        clip: > 0, magnitude shown at full brightness, same units as ``flow_norm``.
    Returns:
        ``float32 [T, 3, H, W]`` RGB in [0, 1].
    """
    flow = _check_flow(flow_norm, "flow_norm")
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    u, v = flow[:, 0], flow[:, 1]
    hue6 = torch.remainder(torch.atan2(v, u) * (3.0 / math.pi), 6.0)  # hue in sextants, [0, 6)
    value = torch.clamp(torch.hypot(u, v) / clip, max=1.0)
    # HSV -> RGB with S = 1: channel n is V * (1 - clamp(min(k, 4 - k), 0, 1)), k = (n + 6h) mod 6.
    n = torch.tensor([5.0, 3.0, 1.0], device=flow.device).view(1, 3, 1, 1)
    k = torch.remainder(n + hue6.unsqueeze(1), 6.0)
    rgb = value.unsqueeze(1) * (1.0 - torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return rgb.clamp_(0.0, 1.0)


def flow_pairs(n_frames: int, window: int, stride: int) -> torch.Tensor:
    """Frame index pairs ``(i, i + window)`` for ``i = 0, stride, 2 * stride, ...`` while ``i + window < n_frames``.

    Paper Table 4: window 1, stride 1 = every adjacent pair. Returns ``int64 [P, 2]`` (P may be 0).
    """
    if n_frames < 0 or window < 1 or stride < 1:
        raise ValueError(
            f"flow_pairs needs n_frames >= 0, window >= 1, stride >= 1; got {n_frames}, {window}, {stride}"
        )
    i = torch.arange(0, max(n_frames - window, 0), stride, dtype=torch.long)
    return torch.stack([i, i + window], dim=1)
