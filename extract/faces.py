"""Face detection (facenet-pytorch MTCNN), single-face tracking, box smoothing and cropping.

The pipeline composes four steps per clip:

1. ``FaceDetector.detect``: every face in every frame, ``float32 [k, 5]`` (x1, y1, x2, y2, prob) in
   original frame pixels; frames without a face give ``k = 0`` (never ``None``).
2. ``track_face``: one face followed through the clip, gaps interpolated, with a per-frame mask of
   where it was really detected.
3. ``smooth_boxes``: centred moving average of centre and size, then a square box with a margin.
4. ``crop_faces``: one vectorised ``roi_align`` call turns frames + boxes into ``uint8`` crops.

Box convention: pixel ``i`` covers the continuous interval ``[i, i + 1)``; a box ``(x1, y1, x2, y2)``
spans ``[x1, x2) x [y1, y2)`` in that continuous space (what MTCNN returns, up to its own rounding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from aver.errors import ClipError

from .config import FaceConfig

log = logging.getLogger(__name__)

# Below this IoU with the previously tracked box a detection is another person or a false positive.
TRACK_MIN_IOU = 0.2


def _facenet_mtcnn() -> ModuleType:
    """facenet-pytorch's ``models.mtcnn`` module (the MTCNN class; ``detect_face`` as an attribute).

    facenet-pytorch is installed with ``--no-deps`` (its metadata pins old torch/numpy); its
    ``__init__`` still needs ``requests``, which aver's ``extract`` extra provides.
    """
    try:
        from facenet_pytorch.models import mtcnn
    except ImportError as e:
        raise ImportError(
            f"facenet-pytorch is needed for face detection ({e}); install it with "
            "`pip install --no-deps facenet-pytorch==2.6.0` and `pip install requests`"
        ) from e
    return mtcnn


def _empty_dets() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


class FaceDetector:
    """facenet-pytorch MTCNN (P/R/O-net weights ship inside its wheel), batched and None-free."""

    def __init__(self, cfg: FaceConfig, device: str = "cpu") -> None:
        mtcnn = _facenet_mtcnn()
        self.cfg = cfg
        self.device = torch.device(device)
        self._detect_face = mtcnn.detect_face
        self._net = mtcnn.MTCNN(
            keep_all=True,
            min_face_size=cfg.min_face_size,
            thresholds=list(cfg.thresholds),
            factor=cfg.factor,
            device=self.device,
        ).eval()

    def _downscale(self, frames: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """[B,H,W,3] uint8 -> [B,h,w,3] (float when resized) and the (x, y) factors back to H, W."""
        h, w = frames.shape[1:3]
        scale = self.cfg.detect_max_side / max(h, w)
        if scale >= 1.0:
            return frames, 1.0, 1.0
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        # Area averaging anti-aliases the downscale (the same filter MTCNN uses for its pyramid).
        x = frames.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="area")
        return x.permute(0, 2, 3, 1), w / new_w, h / new_h

    def detect(self, frames: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """Detect every face in a batch of frames with one MTCNN call.

        Args:
            frames: ``uint8 [B, H, W, 3]`` RGB, numpy or torch (any device; moved to the detector's).

        Returns:
            B arrays, each ``float32 [k, 5]``: x1, y1, x2, y2 in original frame pixels and the O-net
            probability; ``k`` may be 0. Detections with prob < ``cfg.min_prob`` are dropped.
            Frames are first downscaled so their longest side is ``cfg.detect_max_side``;
            ``cfg.min_face_size`` applies at that detection resolution.
        """
        x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FaceDetector.detect wants uint8 frames [B,H,W,3], got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"FaceDetector.detect wants uint8 frames, got {x.dtype}")
        batch = x.shape[0]
        x, sx, sy = self._downscale(x.to(self.device))
        # With the shorter side under min_face_size MTCNN's pyramid is empty and detect_face crashes.
        if batch == 0 or min(x.shape[1:3]) < self.cfg.min_face_size:
            return [_empty_dets() for _ in range(batch)]
        with torch.no_grad():
            batch_boxes, _ = self._detect_face(
                x,
                self.cfg.min_face_size,
                self._net.pnet,
                self._net.rnet,
                self._net.onet,
                list(self.cfg.thresholds),
                self.cfg.factor,
                self.device,
            )
        # detect_face returns a numpy object array whose shape depends on the per-frame counts
        # ([B] ragged, [B,k,5] when all equal); its first axis is always the frame.
        out = []
        for i in range(batch):
            d = np.asarray(batch_boxes[i], dtype=np.float32).reshape(-1, 5)
            d = d[d[:, 4] >= self.cfg.min_prob]
            d[:, [0, 2]] *= sx
            d[:, [1, 3]] *= sy
            out.append(np.ascontiguousarray(d))
        return out


def detect_frames(
    detector: FaceDetector, frames: np.ndarray, first: int, every: int, batch: int, lock
) -> list[np.ndarray]:
    """Detections for ``frames`` (the clip's frames ``first``, ``first + 1``, ...), running MTCNN
    only on the frames whose clip index is a multiple of ``every``, ``batch`` frames per call;
    the others get no detection and are filled by the tracker like any gap."""
    out = [_empty_dets() for _ in range(len(frames))]
    chosen = [k for k in range(len(frames)) if (first + k) % every == 0]
    for a in range(0, len(chosen), batch):
        picked = chosen[a : a + batch]
        with lock:
            found = detector.detect(frames[picked] if every > 1 else frames[picked[0] : picked[-1] + 1])
        for k, d in zip(picked, found, strict=True):
            out[k] = d
    return out


@dataclass
class FaceTrack:
    """One face followed through a clip of T frames.

    ``boxes``: ``float32 [T, 4]`` x1, y1, x2, y2 in frame pixels, the raw detection where ``mask`` is
    True, linearly interpolated (held constant at the ends) elsewhere. ``prob``: ``float32 [T]``, the
    detection probability, 0 where filled. ``mask``: ``bool [T]``, True where the face was detected.
    """

    boxes: np.ndarray
    prob: np.ndarray
    mask: np.ndarray


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box ``[4]`` with each of ``others`` ``[k, 4]`` (x1, y1, x2, y2) -> ``float [k]``."""
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _usable(d: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """Drop degenerate boxes and boxes lying entirely outside the frame."""
    d = np.asarray(d, dtype=np.float32).reshape(-1, 5)
    h, w = frame_hw
    keep = (d[:, 2] > d[:, 0]) & (d[:, 3] > d[:, 1]) & (d[:, 2] > 0) & (d[:, 3] > 0)
    keep &= (d[:, 0] < w) & (d[:, 1] < h)
    return d[keep]


def _anchor_score(d: np.ndarray) -> np.ndarray:
    """prob * sqrt(area) per detection row of ``[k, 5]``."""
    return d[:, 4] * np.sqrt((d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1]))


def track_face(dets: list[np.ndarray], frame_hw: tuple[int, int], path: str) -> FaceTrack:
    """Follow one face through a clip.

    Anchor: over all frames, the detection maximising ``prob * sqrt(area)`` -- the most confident
    large face (the square root keeps a slightly larger but far less certain box from winning).
    From the anchor frame the track goes forward, then backward; in each frame it takes the
    detection with the highest IoU with the last tracked box if that IoU is > ``TRACK_MIN_IOU``,
    else the frame is a gap (another person or a false positive). A gap does not move the reference
    box, so the face is found again when it reappears near where it was last seen.

    Args:
        dets: T arrays ``float32 [k, 5]`` (x1, y1, x2, y2, prob) as ``FaceDetector.detect`` returns.
        frame_hw: (height, width) of the frames in pixels; detections lying entirely outside are ignored.
        path: the clip, named in the error.

    Returns:
        ``FaceTrack`` with T rows; gaps are linearly interpolated between the nearest detected
        frames and held constant before the first and after the last.

    Raises:
        ClipError: (stage ``faces``) no usable detection in any frame.
    """
    clean = [_usable(d, frame_hw) for d in dets]
    n = len(clean)
    scored = [(float(_anchor_score(d).max()), t) for t, d in enumerate(clean) if len(d)]
    if not scored:
        raise ClipError(path, f"no face detected in any of the {n} frames", stage="faces")
    anchor_t = max(scored, key=lambda s: (s[0], -s[1]))[1]  # ties: the earliest frame
    anchor = clean[anchor_t][np.argmax(_anchor_score(clean[anchor_t]))]

    boxes = np.zeros((n, 4), dtype=np.float32)
    prob = np.zeros(n, dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    boxes[anchor_t], prob[anchor_t], mask[anchor_t] = anchor[:4], anchor[4], True
    for order in (range(anchor_t + 1, n), range(anchor_t - 1, -1, -1)):
        ref = anchor[:4]
        for t in order:
            d = clean[t]
            if len(d) == 0:
                continue
            iou = box_iou(ref, d[:, :4])
            j = int(np.argmax(iou))
            if iou[j] > TRACK_MIN_IOU:
                boxes[t], prob[t], mask[t] = d[j, :4], d[j, 4], True
                ref = d[j, :4]

    known = np.flatnonzero(mask)
    frames = np.arange(n)
    for c in range(4):
        # np.interp holds the end values constant outside the known range.
        boxes[:, c] = np.interp(frames, known, boxes[known, c].astype(np.float64))
    return FaceTrack(boxes=boxes, prob=prob, mask=mask)


def smooth_boxes(boxes: np.ndarray, window: int, margin: float, frame_hw: tuple[int, int]) -> np.ndarray:
    """Temporally smooth a box track and make it a square crop box.

    Centre (cx, cy) and size (w, h) are averaged over a centred window of ``window`` frames (odd;
    the track is edge-padded, so the output has T rows and no phase shift). The square side is
    ``max(w, h) * (1 + 2 * margin)`` about the smoothed centre.

    Args:
        boxes: ``[T, 4]`` x1, y1, x2, y2 in frame pixels (a ``FaceTrack.boxes``).
        window: odd moving-average length in frames (1 = no smoothing).
        margin: fraction of the side added on every side.
        frame_hw: (height, width) in pixels; only validated. The result is deliberately NOT clipped
            or shifted into the frame (that would make the crop jitter near the border); it may
            extend beyond it, and ``crop_faces`` fills the outside with black.

    Returns:
        ``float32 [T, 4]`` square boxes x1, y1, x2, y2 in frame pixels.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0:
        raise ValueError(f"smooth_boxes wants boxes [T>0, 4], got shape {b.shape}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smooth_boxes: window must be odd and >= 1 (a centred average), got {window}")
    if margin < 0 or min(frame_hw) <= 0:
        raise ValueError(f"smooth_boxes: margin must be >= 0 and frame_hw positive, got {margin}, {frame_hw}")
    cs = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    if window > 1:
        half = window // 2
        padded = np.pad(cs, ((half, half), (0, 0)), mode="edge")
        cs = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0).mean(axis=-1)
    half_side = np.maximum(cs[:, 2], cs[:, 3]) * (1.0 + 2.0 * margin) / 2
    out = np.stack(
        [cs[:, 0] - half_side, cs[:, 1] - half_side, cs[:, 0] + half_side, cs[:, 1] + half_side], 1
    )
    return out.astype(np.float32)


def _face_region(x: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames cut to the union of the boxes (two pixels of margin for the bilinear neighbours)
    and the boxes in its coordinates. When a box reaches outside the frame the frames are kept
    whole, so roi_align's frame-edge rule (black outside) applies exactly as on the full frame."""
    h, w = x.shape[1:3]
    lo, hi = b.min(0).values, b.max(0).values
    if lo[0] < 0 or lo[1] < 0 or hi[2] > w or hi[3] > h:
        return x, b
    x0, y0 = max(int(lo[0].floor()) - 2, 0), max(int(lo[1].floor()) - 2, 0)
    x1, y1 = min(int(hi[2].ceil()) + 2, w), min(int(hi[3].ceil()) + 2, h)
    shift = torch.tensor([x0, y0, x0, y0], dtype=b.dtype, device=b.device)
    return x[:, y0:y1, x0:x1], b - shift


def crop_faces(
    frames: np.ndarray | torch.Tensor, boxes: np.ndarray | torch.Tensor, size: int
) -> torch.Tensor:
    """Crop and resize one box per frame in a single ``torchvision.ops.roi_align`` call.

    Sampling: ``aligned=True`` (pixel ``i`` is centred at ``i + 0.5``, matching the box convention)
    and an adaptive sampling ratio (``ceil(box_side / size)`` bilinear samples per output pixel and
    axis), so large faces are area-averaged rather than aliased and small ones bilinearly upsampled.
    Parts of the box outside the frame come out black (exactly 0 beyond half a source pixel outside;
    within that half pixel roi_align repeats the edge pixel).

    Args:
        frames: ``uint8 [B, H, W, 3]`` RGB (channels last, as decoded), numpy or torch on any device.
        boxes: ``float [B, 4]`` x1, y1, x2, y2 in frame pixels, one per frame (may exceed the frame).
        size: output side in pixels.

    Returns:
        ``uint8 [B, 3, size, size]`` RGB on the frames' device (rounded to nearest).
        Only the region the boxes cover (their union, plus two pixels) is converted to float, so
        the cost follows the face, not the frame (the whole frame when a box leaves it).
    """
    from torchvision.ops import roi_align

    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"crop_faces wants uint8 frames [B,H,W,3], got {x.dtype} {tuple(x.shape)}")
    b = torch.as_tensor(boxes, dtype=torch.float32).to(x.device)
    if b.shape != (x.shape[0], 4):
        raise ValueError(f"crop_faces wants one box per frame [{x.shape[0]}, 4], got {tuple(b.shape)}")
    if x.shape[0] == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=x.device)
    x, b = _face_region(x, b)
    img = x.permute(0, 3, 1, 2).float()
    idx = torch.arange(x.shape[0], device=x.device, dtype=torch.float32).unsqueeze(1)
    crops = roi_align(
        img,
        torch.cat([idx, b], dim=1),
        output_size=(size, size),
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=True,
    )
    return crops.round_().clamp_(0, 255).to(torch.uint8)
