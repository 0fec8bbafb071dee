"""Where ``aver qa`` gets its face crops and optical flow: stage one's own code, not copies of it.

The crops are the cached ones (``inputs/crops``) or, with ``--data``, cut from the raw videos at
the stored ``frames/face_box`` (the smoothed crop boxes) the way extraction cut them: decoded
upright by ``aver.extract.media.iter_frames`` (a phone video's display rotation applied, its
truncation policy kept) and cropped by ``aver.extract.faces.crop_faces`` at the cache's recorded
``face.crop_size``: the crops the models saw. The flow is stage one's DIS backend
(``aver.extract.flow.classical.DISFlow``: OpenCV DIS, medium preset, on BT.601 luma) and the flow
image stage one's ``normalise_flow`` + ``flow_to_image`` with the cache's ``flow.eps`` and
``flow.image_clip``.

Stage one is imported only when it is used: OpenCV (flow), PyAV (decoding) and torchvision
(cropping) are optional, and ``CropSource.missing`` names those not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from aver import layout as L
from aver.cache import FeatureCache

DEFAULT_CROP_SIZE = 224  # extract.config.FaceConfig.crop_size, for a cache that records no config
DECODE_BATCH = 64  # extract.config.RuntimeConfig.decode_batch, for a cache that records no run


def read_column(cache: FeatureCache, name: str, damage: list, fill: Any = 0) -> np.ndarray:
    """Array ``name`` of every clip; a chunk that cannot be decoded is not fatal: its clips read as
    ``fill`` and each is listed in ``damage`` (``aver.integrity.Problem``)."""
    from aver.integrity import Problem

    arr = cache.group[name]
    try:
        return arr[:]
    except Exception:  # noqa: BLE001 - any decoder error: find the clips, name them
        out = np.full(arr.shape, fill, dtype=object if arr.dtype.kind in "OTU" else arr.dtype)
        for i in range(arr.shape[0]):
            try:
                out[i] = arr[i]
            except Exception as e:  # noqa: BLE001
                damage.append(Problem(str(cache.ids[i]), name, f"cannot be read ({type(e).__name__}: {e})"))
        return out


def spread(m: int, k: int) -> np.ndarray:
    """Up to ``k`` of ``range(m)``, spread evenly (bin centres: ``k = 1`` gives the middle)."""
    if m <= 0 or k <= 0:
        return np.zeros(0, np.int64)
    return np.unique(((np.arange(min(k, m)) + 0.5) * m / min(k, m)).astype(np.int64))


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` that are not installed (or hidden: ``sys.modules[name] = None``)."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def recorded(cache: FeatureCache, section: str) -> dict[str, Any]:
    """Section ``section`` (``face``, ``flow``) of the extraction config the cache records ({} if none)."""
    config = cache.meta.get("config")
    value = config.get(section) if isinstance(config, dict) else None
    return value if isinstance(value, dict) else {}


def decode_batch(cache: FeatureCache) -> int:
    """``runtime.decode_batch`` of the last extraction run the cache records (its crop blocks)."""
    for run in reversed(cache.meta.get("runs") or []):
        runtime = run.get("runtime") if isinstance(run, dict) else None
        if isinstance(runtime, dict) and runtime.get("decode_batch"):
            return int(runtime["decode_batch"])
    return DECODE_BATCH


def _chw(crops: np.ndarray):
    """``uint8 [P, S, S, 3]`` numpy -> ``uint8 [P, 3, S, S]`` torch (stage one's crop layout)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)


class Flow:
    """Stage one's optical flow between face crops: its DIS backend (medium preset) and its flow
    image, with the ``flow.eps`` and ``flow.image_clip`` the cache records (stage one's defaults
    otherwise). Needs OpenCV."""

    def __init__(self, flow_config: dict[str, Any] | None = None) -> None:
        from aver.extract.config import FlowConfig
        from aver.extract.flow.classical import DISFlow

        default, flow_config = FlowConfig(), flow_config or {}
        self.eps = float(flow_config.get("eps", default.eps))
        self.image_clip = float(flow_config.get("image_clip", default.image_clip))
        self.backend = DISFlow(FlowConfig(backend="dis", variant="medium"))  # one instance, every pair

    def fields(self, a: np.ndarray, b: np.ndarray):
        """Flow from each crop of ``a`` to the same-index crop of ``b`` (``uint8 [P, S, S, 3]``):
        ``float32 [P, 2, S, S]`` torch, pixels (channel 0 = x, right; 1 = y, down)."""
        return self.backend(_chw(a), _chw(b))

    def stats(self, a: np.ndarray, b: np.ndarray, gaps: np.ndarray) -> tuple[float, float]:
        """Mean and 95th percentile of the flow magnitude over the pairs, in % of the crop side per
        frame (a pair ``g`` frames apart is divided by ``g``), so crops of any size compare."""
        import torch

        f = self.fields(a, b)
        mag = torch.hypot(f[:, 0], f[:, 1]).numpy() / np.asarray(gaps, np.float32)[:, None, None]
        mag = mag / a.shape[1] * 100
        return float(mag.mean()), float(np.percentile(mag, 95))

    def image(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Stage one's flow image of the pair ``(a, b)`` (``uint8 [S, S, 3]`` crops): the flow
        normalised by the σ of its magnitude plus ``flow.eps`` (``normalise_flow``, one map, so
        ``clip`` mode), then ``flow_to_image`` (hue = direction, 0 = right = red; value =
        normalised magnitude / ``flow.image_clip``), as ``uint8 [S, S, 3]``."""
        import torch

        from aver.extract.flow.normalise import flow_to_image, normalise_flow

        norm = normalise_flow(self.fields(a[None], b[None]), self.eps, "clip")
        rgb = flow_to_image(norm, self.image_clip)[0]
        return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def raw_crops(
    path: Path, boxes: np.ndarray, frames: list[int], size: int, block: int = DECODE_BATCH
) -> np.ndarray:
    """``uint8 [K, size, size, 3]``: the crops of ``frames`` (clip frame indices) of a raw video,
    cut exactly as extraction cut them: the frames decoded upright by stage one's ``iter_frames``
    and cropped by its ``crop_stream`` (``crop_faces`` on blocks of ``block`` frames, the run's
    ``runtime.decode_batch``: the block decides the face region converted, and so the last bit)
    at ``boxes`` (the clip's ``[T, 4]`` boxes, source pixels). Decoding stops, at the latest, at
    the end of the block holding the last frame wanted. Raises ``LookupError`` for a missing file or too few frames,
    ``aver.errors.ClipError`` for an unreadable video."""
    from aver.extract.faces import crop_stream
    from aver.extract.media import iter_frames

    if not path.is_file():
        raise LookupError(f"{path}: raw video not found")
    if not frames:
        return np.zeros((0, size, size, 3), np.uint8)
    want, last, out, t = set(frames), max(frames), {}, 0
    with contextlib.closing(iter_frames(path)) as decoded:
        for chunk in crop_stream((rgb for rgb, _ in decoded), boxes, size, block):
            for crop in chunk:
                if t in want:
                    out[t] = crop.permute(1, 2, 0).numpy()
                t += 1
            if t > last:
                break
    if len(out) < len(want):
        raise LookupError(f"{path.name}: {t} frames decoded, fewer than the {last + 1} the stored boxes need")
    return np.stack([out[f] for f in frames])


class CropSource:
    """Consecutive face-crop pairs of a clip: from the cached crops, else cut from the raw video
    (``data``) at the stored boxes (``raw_crops``); ``describe`` says where they come from, and
    ``flow`` is stage one's flow (None without OpenCV)."""

    def __init__(self, cache: FeatureCache, data: str | Path | None, damage: list | None = None) -> None:
        self.cache, self.data = cache, Path(data) if data else None
        self.has_crops = bool(cache.inputs.get("crops")) and int(cache.inputs.get("crop_size", 0)) > 0
        self.ready = cache.input_status() == L.DONE if self.has_crops else None
        damage = [] if damage is None else damage
        self.n_crops = read_column(cache, L.N_CROPS, damage) if self.has_crops else None
        self.videos = read_column(cache, L.VIDEO, damage, "") if self.data else None
        self.crop_size = int(recorded(cache, "face").get("crop_size") or DEFAULT_CROP_SIZE)
        self.block = decode_batch(cache)
        flow_config = recorded(cache, "flow")
        self.window = max(int(flow_config.get("window", 1)), 1)
        self.stride = max(int(flow_config.get("stride", 1)), 1)
        # not installed: cv2 for any flow; av (decoding) and torchvision (crop_faces) for raw crops
        self.missing = missing_modules(("cv2", "av", "torchvision") if self.data else ("cv2",))
        self.raw_ok = bool(self.data) and not {"av", "torchvision"} & set(self.missing)
        self.flow = Flow(flow_config) if "cv2" not in self.missing else None

    def describe(self) -> str:
        """Where the crops come from, or why there are none (one sentence for the page)."""
        parts = []
        if self.has_crops:
            parts.append(f"the cached face crops (inputs/crops, {self.cache.inputs['crop_size']} px)")
        if self.data:
            parts.append(
                f"crops cut at frames/face_box from the raw videos under --data {self.data} (as extraction "
                f"cut them: decoded upright, stage one's crop_faces at face.crop_size {self.crop_size} px)"
            )
        if not parts:
            return (
                "none: the cache holds no face crops (inputs/crops) and no raw-data folder was given "
                "(--data DIR); extract with --inputs crops, or pass --data, to get thumbnails and flow"
            )
        return " when present, else ".join(parts)

    def clip_source(self, i: int) -> str:
        """``cache``, ``raw`` or "" for clip ``i``."""
        if self.has_crops and self.ready[i] and self.n_crops[i] >= 2:
            return "cache"
        return "raw" if self.raw_ok else ""

    def pairs(self, i: int, n_frames: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``k`` pairs of crops ``(first [P,S,S,3], second [P,S,S,3], frame gaps [P])``: of
        consecutive cached crops, or of raw frames ``(t, t + flow.window)`` that stage one paired."""
        source = self.clip_source(i)
        if source == "cache":
            return self._cached(i, k)
        if source == "raw":
            return self._raw(i, n_frames, k)
        raise LookupError("no crops: " + self.describe())

    def _cached(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = int(self.n_crops[i])
        starts = spread(n - 1, k)
        pos = np.unique(np.r_[starts, starts + 1]).tolist()
        crops = self.cache.group[L.CROPS].get_orthogonal_selection(([i], pos))[0]
        index = self.cache.group[L.CROP_INDEX][i, :n]
        at = {p: j for j, p in enumerate(pos)}
        a = crops[[at[p] for p in starts]]
        b = crops[[at[p + 1] for p in starts]]
        gaps = np.maximum(index[starts + 1] - index[starts], 1)
        return a, b, gaps.astype(np.float64)

    def _raw(self, i: int, n_frames: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # stage one's pairs (extract.flow.flow_pairs): t = 0, stride, 2 stride, ... while t + window < n
        n_pairs = -(-max(n_frames - self.window, 0) // self.stride)
        starts = spread(n_pairs, k) * self.stride
        want = np.unique(np.r_[starts, starts + self.window]).tolist()
        crops = self.raw(i, want)
        at = {f: j for j, f in enumerate(want)}
        a = crops[[at[int(t)] for t in starts]]
        b = crops[[at[int(t) + self.window] for t in starts]]
        return a, b, np.full(len(starts), float(self.window))

    def raw(self, i: int, frames: list[int]) -> np.ndarray:
        """``uint8 [K, S, S, 3]``: clip ``i``'s crops of ``frames`` cut from its raw video under
        ``data`` at its stored boxes, ``S = face.crop_size``, in the recorded run's blocks
        (``raw_crops``): the crops extraction made, bit for bit."""
        boxes = self.cache.group[L.FACE_BOX][i, : int(self.cache.lengths["frames"][i])]
        return raw_crops(self.data / str(self.videos[i]), boxes, frames, self.crop_size, self.block)
