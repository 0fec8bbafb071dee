"""Long clips in flat memory: crops and flow maps spill to temporary files, models see windows.

A clip of more than ``runtime.stream_frames`` frames is not held in memory as a whole: its face
crops (``uint8 [T, 3, S, S]``) and flow maps (``float32 [P, 2, S, S]``) go to files in
a private temporary folder (``$TMPDIR``; deleted afterwards) through plain reads and writes (not
memory maps, whose resident pages would count against the process), and every model runs on windows of
``runtime.stream_window`` frames or pairs. Flow pairs that cross a window boundary read both
frames from the crop file, so no pair is lost or duplicated; the flow sigma (one per clip, or
per pixel with ``flow.sigma=pixel``) is accumulated over all windows (``FlowSigma``) before any map is normalised. Peak memory is then
set by the window, not by the clip's length; frames are decoded one at a time and only their face
region is kept, so it is not set by the frame size either (``bench/extract.py --long`` measures both).

The numbers are those of the in-memory path: image embeddings do not depend on batching
(``ImageEncoder.encode_batched``), flow is computed pair by pair, and sigma is the same two-pass
float64 statistic.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from aver.store import Capacity, ClipResult

from .config import ExtractConfig
from .models import Models

log = logging.getLogger(__name__)


def _windows(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


class Spill:
    """Rows of one shape and dtype in a file: appended in order, read back by row range."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype) -> None:
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        self.file = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        self.file.seek(self.n * self.row_bytes)
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.n += len(rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        self.file.seek(start * self.row_bytes)
        data = self.file.read((stop - start) * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(stop - start, *self.row_shape).copy()

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        self.file.close()


def _crop_file(p, cfg: ExtractConfig, folder: Path) -> Spill:
    """Second decoding pass, written to a ``uint8 [T, 3, S, S]`` spill file instead of memory
    (``clip.iter_crops``: frames decoded one at a time, only their face region kept)."""
    import contextlib

    from .clip import iter_crops

    s = cfg.face.crop_size
    crops = Spill(folder / "crops.u8", (3, s, s), np.uint8)
    # compute_group runs under models.lock already: no second lock here.
    for chunk in iter_crops(p.record.video, p.boxes, p.n_frames, cfg, contextlib.nullcontext()):
        crops.append(chunk.cpu().numpy())
    return crops


def _flow_file(crops: Spill, pairs: np.ndarray, cfg: ExtractConfig, models: Models, folder: Path):
    """Flow of every pair into a ``float32 [P, 2, S, S]`` spill file; returns it and the clip's sigma.

    A window of pairs reads the contiguous range of frames its pairs touch, so pairs that cross a
    window boundary get both of their frames.
    """
    import torch

    from .flow import FlowSigma

    rt = cfg.runtime
    flows = Spill(folder / "flow.f32", (2, *crops.row_shape[1:]), np.float32)
    stats = FlowSigma(cfg.flow.sigma)
    for a, b in _windows(len(pairs), rt.stream_window):
        lo, hi = int(pairs[a:b].min()), int(pairs[a:b].max()) + 1
        frames = torch.from_numpy(crops.read(lo, hi)).to(rt.device)
        idx = torch.from_numpy(pairs[a:b] - lo).to(rt.device)
        window = torch.cat(
            [
                models.flow(frames[idx[k : k + rt.flow_batch, 0]], frames[idx[k : k + rt.flow_batch, 1]])
                for k in range(0, len(idx), rt.flow_batch)
            ]
        )
        flows.append(window.cpu().numpy())
        stats.add_mean(window)
    if len(pairs) < 2 and cfg.flow.sigma == "pixel":
        return flows, None
    for a, b in _windows(len(pairs), rt.stream_window):
        stats.add_var(torch.from_numpy(flows.read(a, b)))
    return flows, stats.sigma()


def compute_long(p, cfg: ExtractConfig, models: Models, cap: Capacity) -> ClipResult:
    """Flow and features of one long clip (a ``Prepared`` without crops), in bounded memory."""
    import torch

    from .clip import _f16, audio_result
    from .flow import apply_sigma, flow_pairs, flow_to_image

    rt = cfg.runtime
    with tempfile.TemporaryDirectory(prefix="aver-clip-") as tmp:
        crops = _crop_file(p, cfg, Path(tmp))
        frame_feats = torch.cat(
            [
                models.image.encode_batched(torch.from_numpy(crops.read(a, b)).to(rt.device), rt.image_batch)
                for a, b in _windows(len(crops), rt.stream_window)
            ]
        )
        pairs = flow_pairs(len(crops), cfg.flow.window, cfg.flow.stride).numpy()
        flows, sigma = _flow_file(crops, pairs, cfg, models, Path(tmp))
        flow_feats = [torch.zeros(0, models.image.dim)]
        for a, b in _windows(len(pairs), rt.stream_window):
            f = apply_sigma(torch.from_numpy(flows.read(a, b)).to(rt.device), sigma, cfg.flow.eps)
            flow_feats.append(
                models.image.encode_batched(flow_to_image(f, cfg.flow.image_clip), rt.image_batch)
            )
        crops.close()
        flows.close()
    log.debug("%s: %d frames streamed in windows of %d", p.record.video, p.n_frames, rt.stream_window)
    return ClipResult(
        frame_features=_f16(frame_feats, p.record.video, "frame"),
        flow_features=_f16(torch.cat(flow_feats), p.record.video, "flow"),
        **audio_result(p, models, cap),
    )
