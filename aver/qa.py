"""``aver qa``: a quality report a person reads before trusting a cache.

One self-contained HTML page (inline CSS, images as base64 data URIs, no script, no external URL;
the PNGs are also written beside it, with a CSV of the per-clip table): the clip counts, every
failure grouped by cause, per-clip measures (face detection rate, interpolated frames, track
jumps, optical-flow magnitude, audio vs video duration), dataset histograms, outliers by a stated
robust rule, and face / flow thumbnails for a sample of clips and the worst clips by each measure.

The measures read the cache through ``FeatureCache`` one clip at a time (numpy only). The cache
stores flow *features*, not flow fields, so flow magnitude is recomputed with OpenCV's DIS
optical flow on consecutive cached face crops (``inputs/crops``), or on crops cut from the raw
videos at the stored ``frames/face_box`` when ``data`` is given (decoded with PyAV). OpenCV and
PyAV are imported lazily; the page says when a measure is unavailable and why. Every text that
comes from the cache (ids, errors, notes, paths) is HTML-escaped.
"""

from __future__ import annotations

import base64
import collections
import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aver import layout as L
from aver.cache import FeatureCache
from aver.utils import for_csv, for_html

JUMP_CENTRE = 0.25  # a frame step moving the box centre by more than this many box sides is a jump
JUMP_SIZE = 0.25  # ... or changing the box side by more than this fraction
ROBUST_Z = 3.5  # |x - median| / max(1.4826 MAD, s_min) beyond this, on the bad side: an outlier
MIN_ROBUST = 5  # clips with a value needed before the robust rule applies
RAW_CROP = 112  # side of the crops cut from raw video for flow and thumbnails
MAX_TABLE_ROWS = 5000  # per-clip rows on the page (the CSV holds every clip)


@dataclass(frozen=True)
class Measure:
    """One per-clip measure: how it is shown and which side of it is bad."""

    key: str
    label: str
    fmt: str
    bad: str  # "low", "high", "both" or "" (shown, never flagged)
    limit: float | None  # fixed limit: flagged beyond it whatever the robust rule says
    s_min: float  # the smallest spread the robust rule assumes (no flag for tiny deviations)
    help: str


MEASURES = (
    Measure("video_s", "video s", "{:.2f}", "", None, 0, "n_frames / fps"),
    Measure("audio_s", "audio s", "{:.2f}", "", None, 0, "audio duration (see the note on audio)"),
    Measure("av_delta", "audio − video s", "{:+.3f}", "both", 0.5, 0.05, "audio minus video duration"),
    Measure(
        "detection",
        "detection rate",
        "{:.3f}",
        "low",
        0.5,
        0.05,
        "share of frames where MTCNN found the face",
    ),
    Measure("interpolated", "interpolated", "{:.0f}", "", None, 0, "frames whose box was interpolated"),
    Measure("longest_gap", "longest gap", "{:.0f}", "high", None, 5, "longest run of interpolated frames"),
    Measure("face_prob", "mean face prob", "{:.3f}", "low", None, 0.02, "mean MTCNN probability"),
    Measure(
        "jumps",
        "track jumps",
        "{:.0f}",
        "high",
        0.5,
        1,
        f"frame steps moving the box centre > {JUMP_CENTRE} box side or its size > {JUMP_SIZE:.0%}",
    ),
    Measure("centre_step", "max centre move", "{:.3f}", "high", None, 0.02, "largest centre step, box sides"),
    Measure("size_step", "max size change", "{:.3f}", "high", None, 0.02, "largest relative size step"),
    Measure(
        "flow_mean", "flow mean %", "{:.2f}", "both", None, 0.25, "mean flow magnitude, % crop side/frame"
    ),
    Measure("flow_p95", "flow p95 %", "{:.2f}", "high", None, 0.25, "95th percentile flow magnitude"),
)
BY_KEY = {m.key: m for m in MEASURES}


@dataclass
class QAResult:
    """Everything the page shows; per-clip values are float [N] (NaN where not measured)."""

    url: str
    meta: dict[str, Any]
    ids: np.ndarray
    status: np.ndarray
    n_frames: np.ndarray
    values: dict[str, np.ndarray]
    errors: dict[int, str] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)
    flow_source: str = ""  # where the flow and thumbnails come from, or why they are unavailable
    flow_problems: dict[int, str] = field(default_factory=dict)
    audio_basis: str = ""
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    flags: dict[int, list[str]] = field(default_factory=dict)
    damage: list = field(default_factory=list)  # aver.integrity.Problem: unreadable or not as recorded
    page: Path | None = None  # where ``report`` wrote the page


# -- per-clip measures (numpy) -----------------------------------------------------------------
def track_measures(box: np.ndarray, mask: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Detection rate, interpolated frames, longest gap, face probability and track jumps of one
    clip's valid rows (``box`` float [T, 4] x1 y1 x2 y2, ``mask`` bool [T], ``prob`` float [T])."""
    n = len(mask)
    if n == 0:
        return {}
    mask = np.asarray(mask, bool)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[1, mask.astype(np.int8), 1]) != 0))
    out = {
        "detection": float(mask.mean()),
        "interpolated": float(n - mask.sum()),
        "longest_gap": float(runs[::2].max(initial=0)),
        "face_prob": float(np.mean(prob)),
        "jumps": 0.0,
        "centre_step": 0.0,
        "size_step": 0.0,
    }
    if n > 1:
        b = np.asarray(box, np.float64)
        side = np.maximum(b[:, 2] - b[:, 0], 1e-6)
        centre = (b[:, :2] + b[:, 2:]) / 2
        move = np.linalg.norm(np.diff(centre, axis=0), axis=1) / side[:-1]
        size = np.abs(side[1:] / side[:-1] - 1)
        out["jumps"] = float(np.sum((move > JUMP_CENTRE) | (size > JUMP_SIZE)))
        out["centre_step"], out["size_step"] = float(move.max()), float(size.max())
    return out


def audio_seconds(cache: FeatureCache) -> tuple[np.ndarray, str]:
    """Audio duration of every clip, float [N], and how it was obtained (said on the page)."""
    n_audio = cache.lengths["audio"].astype(np.float64)
    fragments = cache.audio_fragments
    rate = float(cache.dims["audio_rate_hz"])
    if fragments:
        size, hop = fragments
        secs = np.where(n_audio > 0, (n_audio - 1) * hop + size, 0.0)
        basis = f"audio fragments: (n_audio − 1) × {hop:g} s + {size:g} s (± one hop)"
    else:
        secs = n_audio / max(rate, 1e-9)
        basis = f"n_audio / {rate:g} Hz (wav2vec2 frames: ± 1 frame, {1000 / max(rate, 1e-9):.0f} ms)"
    inputs = cache.inputs
    if inputs.get("wave") and inputs.get("sample_rate"):
        ready = cache.input_status() == L.DONE
        if ready.any():
            n_wave = cache.group[L.N_WAVE][:].astype(np.float64)
            secs = np.where(ready, n_wave / float(inputs["sample_rate"]), secs)
            basis = f"stored waveform: n_wave / {inputs['sample_rate']} Hz (else {basis})"
    return secs, basis


def robust_bounds(x: np.ndarray, m: Measure) -> tuple[float, float]:
    """``(lo, hi)``: a value below lo or above hi is an outlier. The robust rule (median ± 3.5 ×
    max(1.4826 MAD, s_min), on the measure's bad side, with at least ``MIN_ROBUST`` values) and
    the fixed limit, whichever is stricter."""
    lo, hi = -math.inf, math.inf
    x = x[np.isfinite(x)]
    if not m.bad:
        return lo, hi
    if len(x) >= MIN_ROBUST:
        med = float(np.median(x))
        scale = max(1.4826 * float(np.median(np.abs(x - med))), m.s_min)
        if m.bad in ("low", "both"):
            lo = med - ROBUST_Z * scale
        if m.bad in ("high", "both"):
            hi = med + ROBUST_Z * scale
    if m.limit is not None:
        if m.bad == "low":
            lo = max(lo, m.limit)
        elif m.bad == "high":
            hi = min(hi, m.limit)
        else:
            lo, hi = max(lo, -m.limit), min(hi, m.limit)
    return lo, hi


def flag_outliers(result: QAResult) -> None:
    """Fill ``result.bounds`` and ``result.flags`` (clip -> labels of the measures it fails)."""
    for m in MEASURES:
        x = result.values[m.key]
        lo, hi = robust_bounds(x, m)
        result.bounds[m.key] = (lo, hi)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(np.isfinite(x) & ((x < lo) | (x > hi)))
        for i in bad:
            result.flags.setdefault(int(i), []).append(m.label)


def worst_clips(result: QAResult, m: Measure, k: int) -> list[int]:
    """The ``k`` clips worst by ``m`` (lowest, highest, or farthest from the median)."""
    x = result.values[m.key]
    valid = np.flatnonzero(np.isfinite(x))
    if not m.bad or not len(valid):
        return []
    v = x[valid]
    badness = {"low": -v, "high": v, "both": np.abs(v - np.median(v))}[m.bad]
    order = np.argsort(-badness, kind="stable")[:k]
    return [int(valid[j]) for j in order]


# -- crops and optical flow ----------------------------------------------------------------------
def spread(m: int, k: int) -> np.ndarray:
    """Up to ``k`` of ``range(m)``, spread evenly (bin centres: ``k = 1`` gives the middle)."""
    if m <= 0 or k <= 0:
        return np.zeros(0, np.int64)
    return np.unique(((np.arange(min(k, m)) + 0.5) * m / min(k, m)).astype(np.int64))


class CropSource:
    """Consecutive face-crop pairs of a clip: from the cached crops, else cut from the raw video
    (``data``) at the stored boxes; ``reason`` says why a clip has none."""

    def __init__(self, cache: FeatureCache, data: str | Path | None, damage: list | None = None) -> None:
        self.cache, self.data = cache, Path(data) if data else None
        self.has_crops = bool(cache.inputs.get("crops")) and int(cache.inputs.get("crop_size", 0)) > 0
        self.ready = cache.input_status() == L.DONE if self.has_crops else None
        damage = [] if damage is None else damage
        self.n_crops = read_column(cache, L.N_CROPS, damage) if self.has_crops else None
        self.videos = read_column(cache, L.VIDEO, damage, "") if self.data else None
        # what is needed and not installed: cv2 for any flow (and to cut raw crops), av to decode raw video
        self.missing = _missing_modules(("cv2", "av") if self.data else ("cv2",))
        self.raw_ok = bool(self.data) and not self.missing

    def describe(self) -> str:
        """Where the crops come from, or why there are none (one sentence for the page)."""
        parts = []
        if self.has_crops:
            parts.append(f"the cached face crops (inputs/crops, {self.cache.inputs['crop_size']} px)")
        if self.data:
            parts.append(f"crops cut at frames/face_box from the raw videos under --data {self.data}")
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
        """Up to ``k`` pairs of consecutive crops ``(first [P,S,S,3], second [P,S,S,3], frame gaps [P])``."""
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
        starts = spread(n_frames - 1, k)
        want = np.unique(np.r_[starts, starts + 1])
        boxes = self.cache.group[L.FACE_BOX][i, : int(want.max(initial=0)) + 1]
        path = self.data / str(self.videos[i])
        crops = raw_crops(path, boxes, want.tolist(), RAW_CROP)
        if any(f not in crops for f in want.tolist()):
            raise LookupError(f"{self.videos[i]}: decoded {len(crops)} of the {len(want)} frames needed")
        a = np.stack([crops[int(f)] for f in starts])
        b = np.stack([crops[int(f) + 1] for f in starts])
        return a, b, np.ones(len(starts))


def _missing_modules(names: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def raw_crops(path: Path, boxes: np.ndarray, frames: list[int], size: int) -> dict[int, np.ndarray]:
    """Crops ``uint8 [size, size, 3]`` of the given frames of a raw video, cut at ``boxes`` (source
    pixels; outside the frame is black). Decodes up to the last frame wanted, converting only those."""
    import av
    import cv2

    if not path.is_file():
        raise LookupError(f"{path}: raw video not found")
    want, last, out = set(frames), max(frames, default=-1), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for k, frame in enumerate(container.decode(stream)):
            if k > last:
                break
            if k in want:
                rgb = frame.to_ndarray(format="rgb24")
                quarter = round(float(getattr(frame, "rotation", 0) or 0) / 90.0) % 4
                rgb = np.ascontiguousarray(np.rot90(rgb, k=quarter)) if quarter else rgb
                x1, y1, x2, y2 = (float(v) for v in boxes[k])
                sx, sy = size / max(x2 - x1, 1e-6), size / max(y2 - y1, 1e-6)
                warp = np.float32([[sx, 0, -x1 * sx], [0, sy, -y1 * sy]])
                out[k] = cv2.warpAffine(rgb, warp, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return out


def flow_field(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS optical flow (OpenCV, medium preset) from RGB crop ``a`` to ``b``: float32 [S, S, 2] (u, v)."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    ga, gb = (cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY) for x in (a, b))
    return dis.calc(ga, gb, None)


def flow_stats(a: np.ndarray, b: np.ndarray, gaps: np.ndarray) -> tuple[float, float]:
    """Mean and 95th percentile of the flow magnitude over the pairs, in % of the crop side per
    frame (a pair ``g`` frames apart is divided by ``g``), so crops of any size compare."""
    mags = []
    for x, y, g in zip(a, b, gaps, strict=True):
        f = flow_field(x, y)
        mags.append((np.hypot(f[..., 0], f[..., 1]) / g / x.shape[0] * 100).ravel())
    m = np.concatenate(mags)
    return float(m.mean()), float(np.percentile(m, 95))


def flow_image(flow: np.ndarray, image_clip: float = 3.0) -> np.ndarray:
    """The layout's colour-wheel image (hue = direction, 0° = right = red; value = |F̂| / 3 with
    F̂ = F / σ of the magnitude) of one flow field: uint8 [S, S, 3]."""
    from matplotlib.colors import hsv_to_rgb

    mag = np.hypot(flow[..., 0], flow[..., 1])
    norm = mag / (float(mag.std()) + 1e-6)
    hue = (np.arctan2(flow[..., 1], flow[..., 0]) % (2 * np.pi)) / (2 * np.pi)
    hsv = np.stack([hue, np.ones_like(hue), np.clip(norm / image_clip, 0, 1)], axis=-1)
    return (hsv_to_rgb(hsv) * 255).round().astype(np.uint8)


# -- the measures over the cache --------------------------------------------------------------
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


def measure_cache(
    url: str,
    data: str | Path | None = None,
    storage_options: dict | None = None,
    flow_pairs: int = 16,
    progress: bool = False,
    verify: bool = True,
) -> tuple[QAResult, FeatureCache, CropSource]:
    """Every measure of every committed clip, reading one clip at a time. A clip whose arrays cannot
    be read, or (with ``verify``) differ from their recorded digests, is listed in ``damage``."""
    cache = FeatureCache(url, storage_options)
    n, damage = len(cache), list(getattr(cache, "damage", []))
    values = {m.key: np.full(n, np.nan) for m in MEASURES}
    n_frames = cache.lengths["frames"]
    fps = read_column(cache, L.FPS, damage, np.nan).astype(np.float64)
    done = np.flatnonzero(cache.status == L.DONE)
    values["video_s"][done] = n_frames[done] / np.maximum(fps[done], 1e-9)
    secs, basis = audio_seconds(cache)
    values["audio_s"][done] = secs[done]
    values["av_delta"][done] = secs[done] - values["video_s"][done]
    result = QAResult(url, cache.meta, cache.ids, cache.status, n_frames, values, audio_basis=basis)
    result.damage = damage
    source = CropSource(cache, data, damage)
    result.flow_source = _flow_source_text(source)
    _measure_clips(result, cache, source, done, flow_pairs, progress)
    failed = np.flatnonzero(cache.status == L.FAILED)
    errors = read_column(cache, L.ERROR, damage, "") if len(failed) else []
    result.errors = {int(i): str(errors[i]) for i in failed}
    notes = cache.notes()
    result.notes = {int(i): str(notes[i]) for i in done if notes[i]}
    if verify:
        result.damage += cache.verify(progress=progress)[0]
    result.damage = _unique(result.damage)
    flag_outliers(result)
    return result, cache, source


def _measure_clips(
    result: QAResult, cache, source: CropSource, done, flow_pairs: int, progress: bool
) -> None:
    """The face-track and flow measures of each done clip; a clip whose face arrays cannot be read
    is listed in ``result.damage`` and left unmeasured."""
    from tqdm import tqdm

    from aver.integrity import Problem

    g = cache.group
    for i in tqdm(done, unit="clip", disable=not progress, leave=False):
        t = int(result.n_frames[i])
        rows = {}
        for name in (L.FACE_BOX, L.FACE_MASK, L.FACE_PROB):
            try:
                rows[name] = g[name][i, :t]
            except Exception as e:  # noqa: BLE001 - an undecodable chunk: this clip is damaged
                result.damage.append(
                    Problem(str(cache.ids[i]), name, f"cannot be read ({type(e).__name__}: {e})")
                )
        if len(rows) < 3:
            continue
        for key, v in track_measures(rows[L.FACE_BOX], rows[L.FACE_MASK], rows[L.FACE_PROB]).items():
            result.values[key][i] = v
        if "cv2" not in source.missing:
            _clip_flow(result, source, int(i), t, flow_pairs)


def _unique(problems: list) -> list:
    """One problem per clip and array (the first found), in clip order."""
    seen: dict[tuple[str, str], Any] = {}
    for p in problems:
        seen.setdefault((p.clip, p.array), p)
    return list(seen.values())


def _flow_source_text(source: CropSource) -> str:
    """Where the flow comes from, or why it is unavailable (for the page)."""
    names = {"cv2": "OpenCV (cv2)", "av": "PyAV (av)"}
    if "cv2" in source.missing:
        return (
            "unavailable: OpenCV (cv2) is not installed (pip install opencv-python-headless, or the extract "
            "extra)" + ("; thumbnails come from the cached crops" if source.has_crops else "")
        )
    if source.missing:
        missing = ", ".join(names[m] for m in source.missing)
        raw = f"; raw videos cannot be read: {missing} not installed (pip install av)"
        return ("the cached face crops only" if source.has_crops else "unavailable") + raw
    return source.describe()


def _clip_flow(result: QAResult, source: CropSource, i: int, n_frames: int, k: int) -> None:
    """Flow statistics of clip ``i``; a clip without crops (or whose video fails) is noted, not fatal."""
    if not source.clip_source(i):
        result.flow_problems[i] = "no crops" if source.has_crops else "no crops, no --data"
        return
    try:
        a, b, gaps = source.pairs(i, n_frames, k)
    except Exception as e:  # noqa: BLE001 - a missing or broken raw file: say so for this clip
        result.flow_problems[i] = f"{type(e).__name__}: {e}"
        return
    if len(a):
        result.values["flow_mean"][i], result.values["flow_p95"][i] = flow_stats(a, b, gaps)
    else:
        result.flow_problems[i] = "fewer than two frames"


# -- figures ---------------------------------------------------------------------------------
def png_bytes(fig) -> bytes:
    """A matplotlib ``Figure`` rendered by Agg (no global backend change) to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def histograms(result: QAResult) -> bytes | None:
    """Small multiples: one histogram per measure with values, outlier limits dashed red."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    shown = [m for m in MEASURES if _spread(result.values[m.key]) > 0]
    if not shown:
        return None
    cols = 4
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(cols * 3.2, rows * 2.4), dpi=80, layout="constrained")
    for k, m in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        x = result.values[m.key]
        x = x[np.isfinite(x)]
        ax.hist(x, bins=min(30, max(5, len(x) // 3)), color="#4c72b0")
        lo, hi = result.bounds.get(m.key, (-math.inf, math.inf))
        reach = 0.25 * (x.max() - x.min())  # a limit far outside the values is not drawn
        for b in (lo, hi):
            if math.isfinite(b) and x.min() - reach <= b <= x.max() + reach:
                ax.axvline(b, color="#c44e52", ls="--", lw=1)
        ax.set_title(m.label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(labelsize=7)
    return png_bytes(fig)


def _spread(x: np.ndarray) -> float:
    """max - min of the finite values (-1 when there are none)."""
    x = x[np.isfinite(x)]
    return float(x.max() - x.min()) if len(x) else -1.0


def tile(face: np.ndarray, flow: np.ndarray | None) -> bytes:
    """One thumbnail PNG: the face crop, and beside it the flow image to the next crop."""
    from matplotlib.image import imsave

    img = (
        face
        if flow is None
        else np.concatenate([face, np.full((face.shape[0], 2, 3), 255, np.uint8), flow], 1)
    )
    buf = io.BytesIO()
    imsave(buf, img, format="png")
    return buf.getvalue()


def clip_tile(result: QAResult, source: CropSource, i: int) -> tuple[bytes | None, str]:
    """Thumbnail of clip ``i`` (its middle crop pair), or None and why."""
    if not source.clip_source(i):
        return None, "no crops" + (f" ({', '.join(source.missing)} not installed)" if source.missing else "")
    try:
        n = int(source.cache.lengths["frames"][i])
        a, b, _ = source.pairs(i, n, 1)
    except Exception as e:  # noqa: BLE001 - shown as text in the grid
        return None, f"{type(e).__name__}: {e}"
    if not len(a):
        return None, "fewer than two frames"
    flow = flow_image(flow_field(a[0], b[0])) if "cv2" not in source.missing else None
    return tile(a[0], flow), ""


# -- the page --------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px}h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;
border-bottom:1px solid #ddd;padding-bottom:4px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f3f3f3}
td.t,th.t{text-align:left}.bad{background:#f8d7da;color:#842029;font-weight:600}
.counts span{display:inline-block;margin-right:18px;font-size:1.1em}.done{color:#146c43}
.failed{color:#b02a37}.pending{color:#997404}.note{background:#fff3cd;border:1px solid #ffe69c;padding:6px 10px;
margin:8px 0}.meta{color:#555;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px;font-size:11px}figure img{width:168px;image-rendering:pixelated;border:1px solid #ccc}
figcaption{word-break:break-all}.scroll{max-height:640px;overflow:auto}code{font-size:12px}
"""


class Page:
    """Collects HTML parts and the PNGs embedded in them (written beside the page too)."""

    def __init__(self, files_dir: Path) -> None:
        self.parts: list[str] = []
        self.files_dir = files_dir
        self.images: dict[str, bytes] = {}

    def add(self, *parts: str) -> None:
        self.parts.extend(parts)

    def img(self, name: str, png: bytes, alt: str) -> str:
        self.images[name] = png
        data = base64.b64encode(png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{for_html(alt)}" title="{for_html(alt)}">'


def _header(page: Page, r: QAResult) -> None:
    m = r.meta
    tiny = ' <span class="bad">TINY random models: not for research</span>' if m.get("tiny") else ""
    flow_cfg = (m.get("config") or {}).get("flow") or {}
    flow_model = ((m.get("models") or {}).get("flow") or {}) if isinstance(m.get("models"), dict) else {}
    page.add(
        f"<h1>Cache quality report: {for_html(m.get('dataset'))}</h1>",
        f'<p class="meta">store <code>{for_html(r.url)}</code> · preset {for_html(m.get("preset"))}{tiny} · config '
        f"{for_html(m.get('config_hash'))} · layout v{for_html(m.get('layout_version'))} · {for_html(m.get('code_version', ''))}"
        f"<br>cached flow features: {for_html(flow_model.get('backend') or flow_model.get('model') or '-')}, "
        f"window/stride {for_html(flow_cfg.get('window', 1))}/{for_html(flow_cfg.get('stride', 1))} (the cache keeps "
        "no flow fields: the flow measures below are recomputed with OpenCV DIS)</p>",
    )


def _counts(page: Page, r: QAResult) -> None:
    c = collections.Counter(int(s) for s in r.status)
    total = len(r.status)
    page.add(
        "<h2>Clips</h2><p class='counts'>",
        f"<span>total <b id='n-total'>{total}</b></span>",
        f"<span class='done'>done <b id='n-done'>{c[L.DONE]}</b></span>",
        f"<span class='failed'>failed <b id='n-failed'>{c[L.FAILED]}</b></span>",
        f"<span class='pending'>pending <b id='n-pending'>{c[L.PENDING]}</b></span>",
        f"<span class='failed'>damaged <b id='n-damaged'>{len({p.clip for p in r.damage if not p.table})}</b></span></p>",
    )
    if c[L.PENDING]:
        page.add(
            f"<p class='note'>{c[L.PENDING]} clips are pending: rerun the same `aver extract` to finish.</p>"
        )


def failure_groups(errors: dict[int, str]) -> list[tuple[str, list[int]]]:
    """Failures grouped by cause: the error without its leading file name (``<file>: [<stage>]
    <cause>``), most frequent first."""
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, e in errors.items():
        m = re.match(r"^.*?: (\[[^\]]+\].*)$", e, flags=re.S)
        groups[(m.group(1) if m else e).strip() or "(no cause recorded)"].append(i)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _failures(page: Page, r: QAResult) -> None:
    if not r.errors:
        page.add("<h2>Failures</h2><p>None.</p>")
        return
    page.add(f"<h2>Failures ({len(r.errors)}), by cause</h2><table><tr><th>clips</th><th class=t>cause</th>")
    page.add("<th class=t>clips (error as recorded)</th></tr>")
    for cause, clips in failure_groups(r.errors):
        items = "<br>".join(f"{for_html(r.ids[i])}: {for_html(r.errors[i])}" for i in clips[:50])
        more = f"<br>… and {len(clips) - 50} more" if len(clips) > 50 else ""
        page.add(
            f"<tr><td>{len(clips)}</td><td class='t failure'>{for_html(cause)}</td><td class=t>{items}{more}</td></tr>"
        )
    page.add("</table>")


def _damage(page: Page, r: QAResult) -> None:
    """Clips whose arrays cannot be read or differ from their digests: not to be trusted."""
    if not r.damage:
        return
    clips = len({p.clip for p in r.damage if not p.table})
    page.add(
        f"<h2 id='damaged'>Damaged ({clips} clip{'' if clips == 1 else 's'})</h2><p class='note'>These arrays "
        "cannot be read, or differ from the digests recorded when the clips were committed (a corrupted, "
        "truncated, deleted or swapped chunk): the measures of these clips are not to be trusted. Copy the "
        "store again, or re-extract them; <code>aver cache verify</code> lists the same.</p>",
        "<table><tr><th class=t>clip</th><th class=t>array</th><th class=t>what</th></tr>",
        *(
            f"<tr><td class=t>{for_html(p.clip)}</td><td class=t>{for_html(p.array)}</td>"
            f"<td class='t bad'>{for_html(p.what)}</td></tr>"
            for p in r.damage[:500]
        ),
        "</table>",
    )


def _notes(page: Page, r: QAResult) -> None:
    if r.notes:
        page.add(f"<h2>Notes ({len(r.notes)} done clips were cut or kept despite lost frames)</h2><ul>")
        page.add(
            *(f"<li>{for_html(r.ids[i])}: {for_html(n)}</li>" for i, n in list(r.notes.items())[:200]),
            "</ul>",
        )


def _availability(page: Page, r: QAResult) -> None:
    done = int((r.status == L.DONE).sum())
    flowed = int(np.isfinite(r.values["flow_mean"]).sum())
    page.add(
        "<h2>Measures</h2><ul>",
        f"<li>face track (detection, interpolation, jumps): from frames/face_mask, face_prob, face_box "
        f"of the {done} done clips. A jump is {for_html(BY_KEY['jumps'].help)}.</li>",
        f"<li>audio duration: {for_html(r.audio_basis)}; video duration: n_frames / fps.</li>",
        f"<li id='flow-source'>flow magnitude (OpenCV DIS, medium, between consecutive face crops; % of "
        f"the crop side per frame): source {for_html(r.flow_source)}. Measured for {flowed} of {done} done clips.</li>",
        "</ul>",
    )
    if flowed < done:
        why = collections.Counter(r.flow_problems.values())
        reasons = "; ".join(f"{for_html(k)} ({v} clips)" for k, v in why.most_common(5))
        if r.flow_source.startswith(("unavailable", "none")):
            reasons = for_html(r.flow_source)
        page.add(
            f"<p class='note' id='flow-unavailable'>Flow unavailable for {done - flowed} clips: {reasons}</p>"
        )


def _rule(page: Page, r: QAResult) -> None:
    rows = []
    for m in MEASURES:
        if not m.bad:
            continue
        lo, hi = r.bounds[m.key]
        fixed = (
            ""
            if m.limit is None
            else {"low": f"< {m.limit:g}", "high": f"> {m.limit:g}", "both": f"|x| > {m.limit:g}"}[m.bad]
        )
        rows.append(
            f"<tr><td class=t>{for_html(m.label)}</td><td class=t>{for_html(m.help)}</td><td class=t>{m.bad}</td>"
            f"<td>{fixed}</td><td>{_num(lo)}</td><td>{_num(hi)}</td></tr>"
        )
    page.add(
        "<h2>Outlier rule</h2><p id='rule'>A clip is flagged on a measure when its value lies beyond the "
        f"robust limit median ± {ROBUST_Z:g} × max(1.4826 × MAD, s<sub>min</sub>) on the measure's bad side "
        f"(applied with at least {MIN_ROBUST} measured clips; s<sub>min</sub> keeps tiny spreads from flagging "
        "everything), or beyond its fixed limit, whichever is stricter.</p>",
        "<table><tr><th class=t>measure</th><th class=t>meaning</th><th class=t>bad side</th><th>fixed limit</th>"
        "<th>flag below</th><th>flag above</th></tr>",
        *rows,
        "</table>",
    )


def _num(x: float, fmt: str = "{:.3g}") -> str:
    return fmt.format(x) if math.isfinite(x) else "–"


def _outliers(page: Page, r: QAResult) -> None:
    page.add(f"<h2>Outliers ({len(r.flags)} clip{'' if len(r.flags) == 1 else 's'})</h2>")
    if not r.flags:
        page.add("<p>No clip is flagged.</p>")
        return
    page.add("<table id='outliers'><tr><th class=t>clip</th><th class=t>flagged on</th></tr>")
    for i in sorted(r.flags)[:500]:
        page.add(
            f"<tr><td class=t>{for_html(r.ids[i])}</td><td class=t>{for_html(', '.join(r.flags[i]))}</td></tr>"
        )
    page.add("</table>")
    if len(r.flags) > 500:
        page.add(f"<p class=note>First 500 of {len(r.flags)} flagged clips; the CSV lists every flag.</p>")


def _table(page: Page, r: QAResult) -> None:
    heads = "".join(f"<th title='{for_html(m.help)}'>{for_html(m.label)}</th>" for m in MEASURES)
    page.add(
        "<h2>Per clip</h2><div class=scroll><table id='clips'><tr><th>#</th><th class=t>clip</th>"
        f"<th class=t>status</th><th>frames</th>{heads}</tr>"
    )
    for i in range(min(len(r.ids), MAX_TABLE_ROWS)):
        cells = []
        for m in MEASURES:
            x = r.values[m.key][i]
            lo, hi = r.bounds[m.key]
            bad = " bad" if math.isfinite(x) and (x < lo or x > hi) else ""
            cells.append(f"<td class='{m.key}{bad}' data-k='{m.key}'>{_num(x, m.fmt)}</td>")
        st = L.STATUS_NAMES.get(int(r.status[i]), "?")
        page.add(
            f"<tr id='clip-{i}'><td>{i}</td><td class=t>{for_html(r.ids[i])}</td><td class='t {st}'>{st}</td>"
            f"<td data-k='n_frames'>{int(r.n_frames[i])}</td>{''.join(cells)}</tr>"
        )
    page.add("</table></div>")
    if len(r.ids) > MAX_TABLE_ROWS:
        page.add(f"<p class=note>First {MAX_TABLE_ROWS} of {len(r.ids)} clips shown; the CSV holds all.</p>")


def _thumbnails(page: Page, r: QAResult, source: CropSource, sample: int, worst: int) -> None:
    """Face / flow thumbnails of a sample of done clips and of the worst clips by each measure."""
    page.add("<h2>Thumbnails</h2>")
    if not source.has_crops and not source.data:
        page.add(
            f"<p class='note' id='thumbs-omitted'>Thumbnails omitted: {for_html(source.describe())}.</p>"
        )
        return
    if source.missing and not source.has_crops:
        page.add(f"<p class='note' id='thumbs-omitted'>Thumbnails omitted: {for_html(r.flow_source)}.</p>")
        return
    flow_note = "" if "cv2" not in source.missing else " (no flow images: OpenCV is not installed)"
    page.add(
        f"<p>Each tile: the middle face crop of the clip and, right of it, the colour-wheel flow image to the "
        f"next crop (hue = direction, red = rightwards; brightness = magnitude / 3σ){flow_note}. Crops from "
        f"{for_html(source.describe())}.</p>"
    )
    tiles: dict[int, tuple[bytes | None, str]] = {}
    done = np.flatnonzero(r.status == L.DONE)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(done, size=min(sample, len(done)), replace=False)) if len(done) else done
    _grid(page, r, source, tiles, f"Sample ({len(chosen)} of {len(done)} done clips)", chosen.tolist(), None)
    for m in MEASURES:
        clips = worst_clips(r, m, worst)
        if clips and _spread(r.values[m.key]) > 0:
            _grid(page, r, source, tiles, f"Worst by {m.label}", clips, m)


def _grid(page: Page, r: QAResult, source: CropSource, tiles: dict, title: str, clips: list[int], m) -> None:
    page.add(f"<h3>{for_html(title)}</h3><div class=grid>")
    for i in clips:
        if i not in tiles:
            tiles[i] = clip_tile(r, source, i)
        png, why = tiles[i]
        img = page.img(f"thumb_{i}.png", png, str(r.ids[i])) if png else f"<p class=note>{for_html(why)}</p>"
        value = f" · {for_html(m.label)} {_num(r.values[m.key][i], m.fmt)}" if m else ""
        flag = " class=bad" if i in r.flags else ""
        page.add(f"<figure>{img}<figcaption{flag}>{for_html(r.ids[i])}{value}</figcaption></figure>")
    page.add("</div>")


def write_csv(path: Path, r: QAResult) -> None:
    """The per-clip table as CSV (every clip)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "status", "n_frames", *(m.key for m in MEASURES), "flags"])
        for i in range(len(r.ids)):
            vals = [
                "" if not np.isfinite(r.values[m.key][i]) else f"{r.values[m.key][i]:.6g}" for m in MEASURES
            ]
            status = L.STATUS_NAMES.get(int(r.status[i]), "?")
            flags = for_csv("; ".join(r.flags.get(i, [])))
            w.writerow([for_csv(r.ids[i]), status, int(r.n_frames[i]), *vals, flags])


def render(r: QAResult, source: CropSource, files_dir: Path, sample: int = 12, worst: int = 4) -> Page:
    """The whole page (in ``Page.parts``) and its images."""
    page = Page(files_dir)
    _header(page, r)
    _counts(page, r)
    _damage(page, r)
    _failures(page, r)
    _notes(page, r)
    _availability(page, r)
    _rule(page, r)
    _outliers(page, r)
    page.add("<h2>Distributions</h2><p>Outlier limits dashed red.</p>")
    hist = histograms(r)
    page.add(page.img("histograms.png", hist, "histograms of the measures") if hist else "")
    same = [m for m in MEASURES if _spread(r.values[m.key]) == 0]
    if same:
        values = ", ".join(
            f"{for_html(m.label)} {_num(float(np.nanmax(r.values[m.key])), m.fmt)}" for m in same
        )
        page.add(f"<p id='constant'>The same in every measured clip: {values}.</p>")
    if not hist and not same:
        page.add("<p>No measured clip.</p>")
    _thumbnails(page, r, source, sample, worst)
    _table(page, r)
    return page


def write_report(url: str, out: str | Path | None = None, **options: Any) -> Path:
    """Measure the cache at ``url`` and write the page to ``out`` (default ``<dataset>-qa.html``),
    its PNGs and the per-clip CSV to ``<out stem>_files/``; ``options`` as ``report``. Returns the
    page's path (``report`` also returns the damaged clips)."""
    return report(url, out, **options).page


def report(
    url: str,
    out: str | Path | None = None,
    data: str | Path | None = None,
    sample: int = 12,
    storage_options: dict | None = None,
    flow_pairs: int = 16,
    worst: int = 4,
    progress: bool = False,
    verify: bool = True,
) -> QAResult:
    """``write_report``, returning the ``QAResult``: ``page`` is the page's path, ``damage`` the
    clips and arrays that cannot be read or differ from their digests (with ``verify``)."""
    if out is not None:
        check_page_path(out)
    result, _cache, source = measure_cache(url, data, storage_options, flow_pairs, progress, verify)
    dataset = str(result.meta.get("dataset") or "cache")
    out = Path(out or f"{re.sub(r'[^A-Za-z0-9._-]+', '_', dataset).strip('.') or 'cache'}-qa.html")
    files_dir = out.with_name(out.stem + "_files")
    page = render(result, source, files_dir, sample, worst)
    files_dir.mkdir(parents=True, exist_ok=True)
    for name, png in page.images.items():
        (files_dir / name).write_bytes(png)
    write_csv(files_dir / "clips.csv", result)
    title = for_html(f"aver qa: {dataset}")
    body = "\n".join(page.parts)
    out.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    result.page = out
    return result


def check_page_path(out: str | Path) -> None:
    """Refuse, before measuring, a page path that is a folder or whose folder cannot be written."""
    from aver.errors import UserError
    from aver.utils import check_out_dir

    if Path(out).is_dir():
        raise UserError(
            f"--out {out}: is a folder; give the HTML page to write, e.g. {Path(out) / 'qa.html'}"
        )
    check_out_dir(Path(out).parent, f"--out {out}: its folder")
