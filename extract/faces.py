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

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from aver.errors import ClipError
from aver.utils import pinned_to, pins_for

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


def to_device(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``x`` on ``device``, pinned first when bound for CUDA (``aver.utils.pinned_to``)."""
    return pinned_to(x, device)


def host_buffer(shape: tuple[int, ...], device: str | torch.device) -> torch.Tensor:
    """An uninitialised ``uint8`` host tensor to fill and then copy to ``device``: pinned when
    ``pins_for(device)``, so the copy needs no staging (``crop_stream``'s face-region chunks)."""
    return torch.empty(shape, dtype=torch.uint8, pin_memory=pins_for(device))


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

    def shrink(self, frames: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """The detection input of ``frames`` (``uint8 [B, H, W, 3]``, any device) on the detector's
        device, and the (x, y) factors from it back to frame pixels.

        Frames whose longest side is within ``cfg.detect_max_side`` are their own input (uint8);
        larger ones become an area-averaged ``float32 [B, h, w, 3]`` copy whose longest side is
        ``detect_max_side``. They are converted to float one at a time, so a batch of 4K frames never
        exists as float (100 MB per frame): MTCNN memory follows the detection size, not the video's.
        """
        h, w = frames.shape[1:3]
        scale = self.cfg.detect_max_side / max(h, w)
        if scale >= 1.0:
            return to_device(frames, self.device), 1.0, 1.0
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        # Area averaging anti-aliases the downscale (the same filter MTCNN uses for its pyramid);
        # frame by frame gives the numbers of the whole batch at once (each output pixel is one mean).
        small = [
            torch.nn.functional.interpolate(
                to_device(f[None], self.device).permute(0, 3, 1, 2).float(), size=(new_h, new_w), mode="area"
            ).permute(0, 2, 3, 1)
            for f in frames
        ]
        x = torch.cat(small) if small else torch.zeros((0, new_h, new_w, 3), device=self.device)
        return x, w / new_w, h / new_h

    def detect(self, frames: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """Detect every face in a batch of frames with one MTCNN call.

        Args:
            frames: ``uint8 [B, H, W, 3]`` RGB, numpy or torch (any device; moved to the detector's).

        Returns:
            B arrays, each ``float32 [k, 5]``: x1, y1, x2, y2 in original frame pixels and the O-net
            probability; ``k`` may be 0. Detections with prob < ``cfg.min_prob`` are dropped.
            Frames are first downscaled so their longest side is ``cfg.detect_max_side``
            (``shrink``); ``cfg.min_face_size`` applies at that detection resolution.
        """
        x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FaceDetector.detect wants uint8 frames [B,H,W,3], got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"FaceDetector.detect wants uint8 frames, got {x.dtype}")
        return self.detect_shrunk(*self.shrink(x))

    def detect_shrunk(self, x: torch.Tensor, sx: float = 1.0, sy: float = 1.0) -> list[np.ndarray]:
        """``detect`` on frames already at detection size (``shrink``'s output and factors)."""
        batch = x.shape[0]
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


class DetectionPass:
    """Detections of a clip whose frames arrive one at a time (``media.iter_frames``).

    A frame whose clip index is a multiple of ``every`` is shrunk to detection size as it arrives
    (``FaceDetector.shrink``); only that copy is kept until MTCNN runs on ``batch`` of them, so
    memory follows the detection size, never the video's resolution. The other frames get no
    detection and are filled by the tracker like any gap. Batches never cross a multiple of
    ``block`` frames from ``first``: the grouping of a pass over decode batches of ``block`` frames
    (``runtime.decode_batch``), so the detections are those of that pass, bit for bit.
    """

    def __init__(self, detector: FaceDetector, every: int, batch: int, block: int, lock, first: int = 0):
        self.detector, self.every, self.batch, self.block, self.lock = detector, every, batch, block, lock
        self.first = self.t = first  # clip index of the first frame / of the next frame
        self.dets: list[np.ndarray] = []
        self._pending: list[tuple[int, torch.Tensor]] = []  # (row of dets, [1, h, w, 3] detection input)
        self._scale = (1.0, 1.0)

    def add(self, frame: np.ndarray | torch.Tensor) -> None:
        """One frame, ``uint8 [H, W, 3]``; not kept."""
        if (self.t - self.first) % self.block == 0:
            self._flush()
        self.dets.append(_empty_dets())
        if self.t % self.every == 0:
            x = torch.from_numpy(frame) if isinstance(frame, np.ndarray) else frame
            with self.lock:
                small, sx, sy = self.detector.shrink(x[None])
            self._pending.append((len(self.dets) - 1, small))
            self._scale = (sx, sy)
            if len(self._pending) == self.batch:
                self._flush()
        self.t += 1

    def _flush(self) -> None:
        if self._pending:
            rows, xs = zip(*self._pending, strict=True)
            self._pending = []
            with self.lock:
                found = self.detector.detect_shrunk(torch.cat(xs), *self._scale)
            for k, d in zip(rows, found, strict=True):
                self.dets[k] = d

    def finish(self) -> list[np.ndarray]:
        """Every frame's detections, ``float32 [k, 5]`` as ``FaceDetector.detect`` returns them."""
        self._flush()
        return self.dets


def detect_frames(
    detector: FaceDetector, frames: np.ndarray, first: int, every: int, batch: int, lock
) -> list[np.ndarray]:
    """Detections for ``frames`` (the clip's frames ``first``, ``first + 1``, ...), running MTCNN
    only on the frames whose clip index is a multiple of ``every``, ``batch`` frames per call;
    the others get no detection and are filled by the tracker like any gap (``DetectionPass``
    over the frames of one decode batch)."""
    run = DetectionPass(detector, every, batch, max(len(frames), 1), lock, first)
    for frame in frames:
        run.add(frame)
    return run.finish()


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


# Float bytes of face region converted per roi_align call in ``crop_stream`` (at least one frame).
CROP_CHUNK_BYTES = 128 << 20


def face_region(b: torch.Tensor, h: int, w: int) -> tuple[tuple[int, int, int, int], torch.Tensor]:
    """The part ``(x0, y0, x1, y1)`` of ``[h, w]`` frames that crops of boxes ``b`` ``[B, 4]`` read:
    the union of the boxes plus two pixels (the bilinear neighbours), and the boxes in its
    coordinates. When a box reaches outside the frame it is the whole frame, so roi_align's
    frame-edge rule (black outside) applies exactly as on the full frame."""
    lo, hi = b.min(0).values, b.max(0).values
    if lo[0] < 0 or lo[1] < 0 or hi[2] > w or hi[3] > h:
        return (0, 0, w, h), b
    x0, y0 = max(int(lo[0].floor()) - 2, 0), max(int(lo[1].floor()) - 2, 0)
    x1, y1 = min(int(hi[2].ceil()) + 2, w), min(int(hi[3].ceil()) + 2, h)
    shift = torch.tensor([x0, y0, x0, y0], dtype=b.dtype, device=b.device)
    return (x0, y0, x1, y1), b - shift


def _roi_crop(x: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` and one box per frame in its pixels -> ``uint8 [B, 3, size, size]``."""
    from torchvision.ops import roi_align

    img = x.permute(0, 3, 1, 2).float()
    idx = torch.arange(x.shape[0], device=x.device, dtype=torch.float32).unsqueeze(1)
    crops = roi_align(
        img,
        torch.cat([idx, to_device(b, x.device)], dim=1),
        output_size=(size, size),
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=True,
    )
    return crops.round_().clamp_(0, 255).to(torch.uint8)


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
        Only the region the boxes cover (their union, plus two pixels: ``face_region``) is
        converted to float, so the cost follows the face, not the frame (the whole frame when a
        box leaves it). ``crop_stream`` does the same on frames as they are decoded.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"crop_faces wants uint8 frames [B,H,W,3], got {x.dtype} {tuple(x.shape)}")
    # The region is read from a host copy of the boxes: on a GPU each comparison and int() of a
    # device tensor would be a synchronisation (issue 21 #8); _roi_crop moves the boxes over.
    b = torch.as_tensor(boxes, dtype=torch.float32).cpu()
    if b.shape != (x.shape[0], 4):
        raise ValueError(f"crop_faces wants one box per frame [{x.shape[0]}, 4], got {tuple(b.shape)}")
    if x.shape[0] == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=x.device)
    (x0, y0, x1, y1), b = face_region(b, *x.shape[1:3])
    return _roi_crop(x[:, y0:y1, x0:x1], b, size)


def crop_stream(
    frames: Iterable[np.ndarray], boxes: np.ndarray, size: int, block: int, device="cpu", lock=None
) -> Iterator[torch.Tensor]:
    """``crop_faces`` of a clip's frames as they are decoded (``media.iter_frames``), in bounded memory.

    The boxes (``float [T, 4]``, one per frame) are known before the frames, so the region each
    block of ``block`` frames needs (``face_region`` of its boxes, as ``crop_faces`` on a decode
    batch of ``block`` frames) is known too: only that region of each frame is copied out, into a
    chunk of at most ``CROP_CHUNK_BYTES`` (counted as float) per roi_align call, one frame at
    least. The crops are those of ``crop_faces`` on the same blocks, bit for bit (each box reads
    only its own frame). Peak memory is one decoded frame plus a chunk of face regions (the whole
    frame where a box leaves it), not ``T x H x W``. For a CUDA ``device`` the chunks are pinned
    host memory (``host_buffer``), so their copy to the GPU is asynchronous.

    Yields ``uint8 [b, 3, size, size]`` chunks on ``device``, in frame order; stops after T frames
    (frames beyond are not read), or earlier when ``frames`` runs out (the caller checks the count).
    """
    all_boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
    n, lock = len(all_boxes), lock or contextlib.nullcontext()

    def crop(regions: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = to_device(regions, device)  # a pinned chunk (host_buffer): the copy overlaps the decoding
        with lock:
            return _roi_crop(x, b, size)

    k = 0
    for t, frame in zip(range(n), frames, strict=False):  # range first: frame T + 1 is never decoded
        if t % block == 0:
            end = min(t + block, n)
            (x0, y0, x1, y1), b = face_region(all_boxes[t:end], *frame.shape[:2])
            chunk, start = max(1, CROP_CHUNK_BYTES // ((x1 - x0) * (y1 - y0) * 3 * 4)), t
        if (t - start) % chunk == 0:
            buf, k = host_buffer((min(chunk, end - t), y1 - y0, x1 - x0, 3), device), 0
            rows = buf.numpy()  # the same memory, filled from numpy frames
        rows[k] = frame[y0:y1, x0:x1]
        k += 1
        if k == len(buf):
            yield crop(buf, b[t + 1 - k - start : t + 1 - start])
            k = 0
    if k:  # the frames ran out early
        yield crop(buf[:k], b[t + 1 - k - start : t + 1 - start])
