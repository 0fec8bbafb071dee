"""Classical CPU optical flow through OpenCV: DIS (default) and Farneback.

Both run one frame pair at a time on grayscale images (OpenCV has no batched API); at 0.2-7 ms per
224x224 pair the loop is cheap next to the neural encoders. OpenCV returns ``[H, W, 2]`` with
channel 0 = x and channel 1 = y, mapping the first image to the second: already our convention.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import FlowConfig
from .base import FLOW_BACKENDS, FlowBackend, pick_variant

# ITU-R BT.601 luma, the weights cv2.COLOR_RGB2GRAY uses.
_LUMA = (0.299, 0.587, 0.114)


def to_gray(frames: torch.Tensor) -> np.ndarray:
    """``uint8 [B, 3, H, W]`` RGB (any device) -> ``uint8 [B, H, W]`` numpy luma, one op for the batch."""
    w = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    gray = (frames.detach().cpu().float() * w).sum(dim=1).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(gray.numpy())


class _ClassicalBackend(FlowBackend):
    """Per-pair loop over grayscale frames; subclasses supply ``_pair``."""

    def __init__(self, cfg: FlowConfig, device: str = "cpu", amp: bool = False) -> None:
        # OpenCV runs on the CPU whatever the run's device; inputs are moved there.
        super().__init__("cpu", amp=False)

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        a, b = to_gray(prev), to_gray(nxt)
        out = np.empty((a.shape[0], a.shape[1], a.shape[2], 2), dtype=np.float32)
        for k in range(a.shape[0]):
            out[k] = self._pair(a[k], b[k])
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def _pair(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@FLOW_BACKENDS.register("dis")
class DISFlow(_ClassicalBackend):
    """OpenCV Dense Inverse Search flow; ``cfg.variant`` in ultrafast | fast | medium (default medium)."""

    name = "dis"

    def __init__(self, cfg: FlowConfig, device: str = "cpu", amp: bool = False) -> None:
        import cv2

        super().__init__(cfg, device, amp)
        self.variant = pick_variant(cfg, ("ultrafast", "fast", "medium"), "medium")
        preset = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }[self.variant]
        # One instance reused for every pair: creating it per call costs more than a 224x224 solve.
        self._dis = cv2.DISOpticalFlow_create(preset)

    def _pair(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._dis.calc(a, b, None)

    def provenance(self) -> dict[str, Any]:
        import cv2

        prov = super().provenance()
        prov["notes"] = (
            f"cv2.DISOpticalFlow preset {self.variant} on BT.601 grayscale, OpenCV {cv2.__version__}"
        )
        return prov


@FLOW_BACKENDS.register("farneback")
class FarnebackFlow(_ClassicalBackend):
    """OpenCV Farneback polynomial-expansion flow with OpenCV's documented example parameters."""

    name = "farneback"
    params = {
        "pyr_scale": 0.5,
        "levels": 3,
        "winsize": 15,
        "iterations": 3,
        "poly_n": 5,
        "poly_sigma": 1.2,
        "flags": 0,
    }

    def __init__(self, cfg: FlowConfig, device: str = "cpu", amp: bool = False) -> None:
        super().__init__(cfg, device, amp)
        self.variant = pick_variant(cfg, ("default",), "default")

    def _pair(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.calcOpticalFlowFarneback(a, b, None, **self.params)

    def provenance(self) -> dict[str, Any]:
        import cv2

        prov = super().provenance()
        prov["notes"] = f"cv2.calcOpticalFlowFarneback {self.params}, OpenCV {cv2.__version__}"
        return prov
