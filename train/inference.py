"""Scoring a trained run outside training: the run rebuilt from its folder, its inputs for cache
rows (whole clips or sliding windows), each head's probabilities, the table and timeline plot.

Used by ``aver predict`` (``aver.apps.prediction``, which makes the features of new videos first)
and by cross-corpus evaluation (``crosscorpus``). Nothing here extracts anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aver.errors import CheckpointError
from aver.utils import for_csv

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """What scoring needs from a run folder: the model with its best weights, and its records."""

    dir: Path
    info: dict[str, Any]  # the checkpoint's info (configs, names, task, cache identity, extraction)
    model: torch.nn.Module
    stats: Any  # aver.train.data.FeatureStats, or None for an end-to-end system
    head: str  # the run's reported head
    spec: Any = None  # aver.train.system.InputSpec of an ``inputs`` system; None: features

    @property
    def names(self) -> list[str]:
        return list(self.info["names"])

    @property
    def classification(self) -> bool:
        return self.info.get("task", "classification") == "classification"


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """The run's best model (rebuilt from its checkpoint alone) and what it was trained on."""
    from aver.train.checkpoint import load_model_state, load_tensors
    from aver.train.data import FeatureStats
    from aver.train.report import saved_model, saved_spec

    run_dir = Path(run_dir)
    state, info = load_model_state(run_dir / "checkpoint")
    model = saved_model(info)
    model.load_state_dict(state)
    model.to(device).eval()
    stats_file = run_dir / "checkpoint" / "feature_stats.safetensors"
    stats, spec = None, saved_spec(info)
    if spec is None:
        stats = FeatureStats.from_tensors(load_tensors(stats_file))
    metrics = run_dir / "metrics.json"
    head = json.loads(metrics.read_text())["reported_head"] if metrics.exists() else info.get("val_head")
    return LoadedRun(run_dir, info, model, stats, head or "fusion", spec)


def recorded_extraction(run: LoadedRun) -> dict[str, Any]:
    """How the run's cache was made: recorded in the run, or (runs before aver 0.4) read from the
    cache at the path it was trained on."""
    extraction = run.info.get("extraction")
    if extraction and extraction.get("config"):
        return extraction
    from aver.cache import FeatureCache

    url = (run.info.get("train_config") or {}).get("cache", "")
    try:
        meta = FeatureCache(url).meta
    except Exception as e:  # noqa: BLE001 - missing or unreadable: say what is needed
        raise CheckpointError(
            f"{run.dir} does not record how its cache was made (trained before aver 0.4) and its cache "
            f"{url!r} cannot be opened ({e}); retrain it, or predict where that cache is"
        ) from None
    keys = ("dataset", "preset", "config", "config_hash", "models", "dims")
    return {k: meta.get(k) for k in keys} | {"inputs": meta.get("inputs") or {}}


def clips_for(run: LoadedRun, cache, indices: np.ndarray) -> list:
    """The model's inputs for cache rows ``indices``: standardised features, or crops + waveforms."""
    from aver.train.config import TrainConfig

    cfg = TrainConfig.from_dict({**run.info["train_config"], "cache": cache.url})
    if run.spec is not None:
        from aver.train.e2e import load_input_clips

        return load_input_clips(cache, indices, run.spec.n_frames)
    from aver.train.data import load_clips

    clips = load_clips(cache, indices, cfg.data)
    run.stats.apply(clips)
    return clips


@torch.no_grad()
def forward(run: LoadedRun, clips: list, device: str) -> dict[str, np.ndarray]:
    """Every head's probabilities (classification) or values, ``{head: [N, C]}``, in clip order."""
    from aver.train.heads import HEADS, output_key
    from aver.train.recipe import make_batch

    outs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(clips), 16):
        out = run.model(make_batch(run.spec, clips[start : start + 16], device))
        for h in HEADS:
            y = out.get(output_key(h))
            if y is not None:
                y = torch.softmax(y.float(), -1) if run.classification else y.float()
                outs.setdefault(h, []).append(y.cpu().numpy())
    return {h: np.concatenate(v) for h, v in outs.items()}


def row_values(run: LoadedRun, values: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    head = run.head if run.head in values else next(iter(values))
    row: dict[str, Any] = {"status": "ok", "error": "", "head": head}
    if run.classification:
        row["prediction"] = run.names[int(values[head][k].argmax())]
    for h, v in values.items():
        row.update({f"{h}_{n}": float(v[k][j]) for j, n in enumerate(run.names)})
    return row


def score_clips(run: LoadedRun, cache, indices: np.ndarray, videos: dict[str, str]) -> list[dict[str, Any]]:
    """One row per extracted clip (whole clip)."""
    if not len(indices):
        return []
    device = str(next(run.model.parameters()).device)
    clips = clips_for(run, cache, indices)
    values = forward(run, clips, device)
    return [
        {"file": videos.get(c.clip_id, ""), "clip": c.clip_id, **row_values(run, values, k)}
        for k, c in enumerate(clips)
    ]


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """``rows`` as CSV (columns: the union, in first-seen order) or JSON (by the suffix)."""
    import csv

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=2))
        return
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([for_csv(c) for c in columns])
        for r in rows:
            w.writerow([_cell(r.get(c, "")) for c in columns])


def _cell(value: Any) -> str:
    return f"{value:.5f}" if isinstance(value, float) else for_csv(str(value))


def _windows(duration: float, window_s: float, hop_s: float) -> list[tuple[float, float]]:
    """Window (start, end) seconds over ``duration``: every ``hop_s``, the last one ending at the
    end (no tail dropped); one window for a clip shorter than ``window_s``."""
    if duration <= window_s:
        return [(0.0, duration)]
    starts = list(np.arange(0.0, duration - window_s + 1e-9, hop_s))
    if starts[-1] + window_s < duration - 1e-6:
        starts.append(duration - window_s)
    return [(float(s), float(s + window_s)) for s in starts]


def score_windows(
    run: LoadedRun, cache, i: int, window_s: float, hop_s: float, video: str
) -> list[dict[str, Any]]:
    """One row per sliding window of clip ``i`` (``start_s``, ``end_s`` and the scores)."""
    from aver import layout as L

    n = int(cache.lengths["frames"][i])
    stamps = cache.array(L.TIMESTAMP, np.array([i]))[0][:n]
    fps = float(cache.array(L.FPS, np.array([i]))[0]) or 25.0
    spans = _windows(float(stamps[-1] - stamps[0]) + 1 / fps, window_s, hop_s)
    frames = [np.flatnonzero((stamps - stamps[0] >= a) & (stamps - stamps[0] < b)) for a, b in spans]
    keep = [(s, f) for s, f in zip(spans, frames, strict=True) if len(f) >= 2]
    build = _window_inputs if run.spec is not None else _window_features
    clips = build(run, cache, i, keep)
    if not clips:
        return []
    values = forward(run, clips, str(next(run.model.parameters()).device))
    return [
        {
            "file": video,
            "clip": str(cache.ids[i]),
            "start_s": round(a, 3),
            "end_s": round(b, 3),
            **row_values(run, values, k),
        }
        for k, ((a, b), _) in enumerate(keep)
    ]


def _window_features(run: LoadedRun, cache, i: int, keep) -> list:
    """DE-III inputs of each window: its frames, the flow maps inside it, its audio fragments."""
    from aver.train.config import TrainConfig
    from aver.train.data import ClipTensors, audio_fragments, flow_end_frames

    data = TrainConfig.from_dict({**run.info["train_config"], "cache": cache.url}).data
    feats = cache.read_features(np.array([i]))
    frames, flow, audio = feats["frames"][0], feats["flow"][0], feats["audio"][0]
    window, stride = cache.flow_schedule
    rate = float(cache.dims["audio_rate_hz"])
    pool = (1, 1) if cache.audio_fragments else (data.audio_window, data.audio_hop)
    out = []
    for (a, b), f in keep:
        f0 = int(f[0]) - int(f[0]) % stride  # flow maps start on multiples of the stride
        f1 = int(f[-1]) + 1
        p = np.arange(f0 // stride, len(flow))
        p = p[p * stride + window < f1]
        if not len(p):
            continue
        x = flow_end_frames(frames[f0:f1], len(p), window, stride)
        frag = audio_fragments(
            audio[int(a * rate) : max(int(np.ceil(b * rate)), int(a * rate) + 1)], *pool, data.audio_layer
        )
        out.append(
            ClipTensors(
                i,
                f"{cache.ids[i]}@{a:.2f}",
                torch.from_numpy(np.ascontiguousarray(x)),
                torch.from_numpy(flow[p]),
                torch.from_numpy(frag.astype(np.float16)),
                -1,
                torch.zeros(0),
            )
        )
    run.stats.apply(out)
    return out


def _window_inputs(run: LoadedRun, cache, i: int, keep) -> list:
    """End-to-end inputs of each window: the crops of its frames and its waveform."""
    from aver.train.e2e import InputClip, frame_choice

    got = cache.read_inputs(np.array([i]))
    crops, index, wave = got["crops"][0], got["crop_index"][0], got["wave"][0]
    sr = int(cache.inputs.get("sample_rate", 16000))
    n_frames = run.spec.n_frames
    out = []
    for (a, b), f in keep:
        rows = np.flatnonzero((index >= f[0]) & (index <= f[-1]))
        if not len(rows):
            continue
        pick = crops[rows][frame_choice(len(rows), n_frames)]
        w = wave[int(a * sr) : max(int(b * sr), int(a * sr) + 1)]
        out.append(
            InputClip(
                i,
                f"{cache.ids[i]}@{a:.2f}",
                torch.from_numpy(np.ascontiguousarray(pick)),
                torch.from_numpy(np.ascontiguousarray(w)),
                -1,
                torch.zeros(0),
            )
        )
    return out


def plot_timeline(rows: list[dict[str, Any]], run: LoadedRun, path: Path) -> None:
    """Each class's probability (y fixed to 0-1) or each target's value (y scaled to the values) of
    the reported head over the windows' centres: ``path`` (PNG) and its SVG copy
    (``aver.train.plots.plot_timeline``). Nothing is drawn when no window was scored."""
    from .plots import plot_timeline as draw

    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return
    head = ok[0]["head"]
    t = [(r["start_s"] + r["end_s"]) / 2 for r in ok]
    series = [(name, [r[f"{head}_{name}"] for r in ok]) for name in run.names]
    unit = " probability" if run.classification else " value"
    draw(t, series, path, f"{head} head{unit}", title=ok[0]["clip"], probabilities=run.classification)
