"""The per-clip measures of ``aver qa``, their robust outlier rule, and the pass over a cache.

The measures read the cache through ``FeatureCache`` one clip at a time (numpy only). The cache
stores flow *features*, not flow fields, so flow magnitude is recomputed with stage one's DIS
backend on pairs of face crops (``sources``: cached crops, or crops cut from the raw videos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aver import layout as L
from aver.cache import FeatureCache

from .sources import CropSource, read_column

JUMP_CENTRE = 0.25  # a frame step moving the box centre by more than this many box sides is a jump
JUMP_SIZE = 0.25  # ... or changing the box side by more than this fraction
ROBUST_Z = 3.5  # |x - median| / max(1.4826 MAD, s_min) beyond this, on the bad side: an outlier
MIN_ROBUST = 5  # clips with a value needed before the robust rule applies


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
    least: float | None = 0.0  # the least value possible (durations, rates, counts, magnitudes: 0)


MEASURES = (
    Measure("video_s", "video s", "{:.2f}", "", None, 0, "n_frames / fps"),
    Measure("audio_s", "audio s", "{:.2f}", "", None, 0, "audio duration (see the note on audio)"),
    Measure("av_delta", "audio − video s", "{:+.3f}", "both", 0.5, 0.05, "audio minus video duration", None),
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
    the fixed limit, whichever is stricter. A lower limit at or below the measure's least possible
    value (``Measure.least``: 0 for a magnitude, whose robust limit can be negative) flags nothing
    and is returned as -inf: it is neither drawn nor stated."""
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
    if m.least is not None and lo <= m.least:
        lo = -math.inf
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


def value_range(x: np.ndarray) -> float:
    """max - min of the finite values (-1 when there are none)."""
    x = x[np.isfinite(x)]
    return float(x.max() - x.min()) if len(x) else -1.0


# -- the measures over the cache --------------------------------------------------------------
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
    result.flow_source = flow_source_text(source)
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
    for i in tqdm(done, desc="qa", unit="clip", disable=not progress, leave=False):
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
        if source.flow is not None:
            _clip_flow(result, source, int(i), t, flow_pairs)


def _unique(problems: list) -> list:
    """One problem per clip and array (the first found), in clip order."""
    seen: dict[tuple[str, str], Any] = {}
    for p in problems:
        seen.setdefault((p.clip, p.array), p)
    return list(seen.values())


def flow_source_text(source: CropSource) -> str:
    """Where the flow comes from, or why it is unavailable (plain text for the page)."""
    names = {"av": "PyAV (av)", "torchvision": "torchvision"}
    raw_missing = [names[m] for m in source.missing if m in names]
    raw = (
        f"; raw videos cannot be read: {', '.join(raw_missing)} not installed (pip install 'aver[extract]')"
        if raw_missing
        else ""
    )
    if source.flow is None:
        where = [
            w for w, ok in (("the cached crops", source.has_crops), ("the raw videos", source.raw_ok)) if ok
        ]
        return (
            "unavailable: OpenCV (cv2) is not installed (pip install opencv-python-headless, or the extract "
            "extra)" + raw + (f"; thumbnails come from {' and '.join(where)}" if where else "")
        )
    if raw_missing:
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
        result.values["flow_mean"][i], result.values["flow_p95"][i] = source.flow.stats(a, b, gaps)
    else:
        result.flow_problems[i] = "fewer than two frames"
