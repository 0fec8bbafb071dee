"""Clips from a cache as padded tensors: audio fragments, length-bucketed batches, collation.

Everything the model sees comes from the cache (``cache_layout.md``); nothing here imports
``aver.extract``. Clips are read once per process with bulk Zarr reads and kept in memory as float16.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from aver.cache import FeatureCache
from aver.errors import CacheError, ConfigError
from aver.utils import pinned_to, pins_for  # noqa: F401  (pins_for: part of this module's surface)

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """How cached features become model inputs.

    Audio fragments (paper 3.1: "we split a given audio clip into a sequence of m fragments using
    a sliding window"): the cached 50 Hz wav2vec2 frames are mean-pooled over windows of
    ``audio_window`` frames every ``audio_hop`` frames. The paper gives no sizes; the defaults
    (10 frames = 200 ms, hop 5 = 100 ms) give ~10 fragments per second. A cache extracted with
    fragment-level encoding (``audio.fragment_s``) already holds one vector per fragment: it is
    used as stored and these two settings do not apply. ``audio_layer`` picks one
    stored hidden-state layer by position; ``None`` averages the stored layers.

    ``labels``: ``hard`` trains on ``clips/label`` with cross-entropy; ``soft`` on the consensus
    distributions of ``clips/soft_label`` with a soft cross-entropy (metrics stay on the hard labels).
    """

    audio_window: int = 10
    audio_hop: int = 5
    audio_layer: int | None = None
    batch_size: int = 16
    bucket: bool = True  # batches of similar length (less padding); order shuffled per epoch
    standardise: bool = True  # features standardised with training-split statistics (paper: not mentioned)
    labels: str = "hard"
    # end-to-end systems: the fold's crops held in memory (true), read from the cache batch by batch
    # (false), or in memory when they fit in 4 GiB (None)
    inputs_in_memory: bool | None = None

    def __post_init__(self) -> None:
        if self.labels not in ("hard", "soft"):
            raise ConfigError(f"data.labels must be hard or soft, not {self.labels!r}")
        if self.audio_window < 1 or self.audio_hop < 1:
            raise ConfigError("data.audio_window and data.audio_hop must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("data.batch_size must be >= 1")


@dataclass
class ClipTensors:
    """One clip ready for batching (valid rows only)."""

    index: int  # row in the cache
    clip_id: str
    frames: torch.Tensor  # float16 [T, Dv]
    flow: torch.Tensor  # float16 [P, Dv]
    audio: torch.Tensor  # float16 [M, Da] fragments
    label: int
    targets: torch.Tensor  # float32 [K]
    soft: torch.Tensor | None = None  # float32 [C] consensus distribution (data.labels=soft)

    @property
    def length(self) -> int:
        """What batches are bucketed by."""
        return int(self.frames.shape[0])


def audio_fragments(frames: np.ndarray, window: int, hop: int, layer: int | None) -> np.ndarray:
    """``[A, L, D]`` wav2vec2 frames -> ``[M, D]`` fragments: mean over ``window`` frames every ``hop``.

    A clip shorter than one window gives one fragment (the mean of what there is). When frames are
    left after the last whole window, one more window ends at the last frame: no tail is dropped.
    """
    x = frames.astype(np.float32)
    x = x.mean(axis=1) if layer is None else x[:, layer]
    a = len(x)
    if a <= window:
        return x.mean(axis=0, keepdims=True)
    starts = np.arange(0, a - window + 1, hop)
    if starts[-1] + window < a:
        starts = np.append(starts, a - window)
    csum = np.concatenate([np.zeros((1, x.shape[1]), np.float64), np.cumsum(x, axis=0, dtype=np.float64)])
    return ((csum[starts + window] - csum[starts]) / window).astype(np.float32)


def flow_end_frames(frames: np.ndarray, n_flow: int, window: int, stride: int) -> np.ndarray:
    """Frames paired with flow (paper Table 4): flow map p ends on frame ``p*stride + window``.

    The models pair flow map p with ``frames[p + 1]`` (``pair_frames_with_flow``), the paper's
    o_i / v_i. With window = stride = 1 that is every frame; otherwise the frames are resampled to
    the first frame followed by each flow map's end frame, so every variant trains on every flow
    window and stride (frames-only variants then see the frames at the flow's rate).
    """
    if window == 1 and stride == 1:
        return frames
    idx = np.array([0, *(p * stride + window for p in range(n_flow))], dtype=np.int64)
    return np.ascontiguousarray(frames[idx])


def load_clips(
    cache: FeatureCache, indices: np.ndarray, cfg: DataConfig, chunk: int = 64
) -> list[ClipTensors]:
    """Committed clips ``indices`` as tensors (sorted by cache row), read ``chunk`` clips at a time
    through ``FeatureCache.read_features`` (one bulk read per array and chunk)."""
    out: list[ClipTensors] = []
    soft = _soft_labels(cache, indices) if cfg.labels == "soft" else None
    window, stride = cache.flow_schedule
    pool = (1, 1) if cache.audio_fragments else (cfg.audio_window, cfg.audio_hop)
    n_layers = int(cache.meta["dims"]["audio_layers"])
    if cfg.audio_layer is not None and not -n_layers <= cfg.audio_layer < n_layers:
        stored = ((cache.meta.get("config") or {}).get("audio") or {}).get("layers")
        raise ConfigError(
            f"data.audio_layer={cfg.audio_layer}: {cache.url} stores {n_layers} audio layer(s) "
            f"(hidden_states {stored}); pick a position 0..{n_layers - 1}"
        )
    order = np.sort(np.asarray(indices, dtype=np.int64))
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        feats = cache.read_features(idx)
        for k, i in enumerate(idx):
            if not np.isfinite(cache.targets[i]).all():
                raise CacheError(
                    f"{cache.url}: clip {cache.ids[i]} has non-finite targets {cache.targets[i].tolist()}"
                )
            frag = audio_fragments(feats["audio"][k], *pool, cfg.audio_layer)
            out.append(
                ClipTensors(
                    index=int(i),
                    clip_id=str(cache.ids[i]),
                    frames=torch.from_numpy(
                        flow_end_frames(feats["frames"][k], len(feats["flow"][k]), window, stride)
                    ),
                    flow=torch.from_numpy(feats["flow"][k]),
                    audio=torch.from_numpy(frag.astype(np.float16)),
                    label=int(cache.labels[i]),
                    targets=torch.from_numpy(cache.targets[i].astype(np.float32)),
                    soft=None if soft is None else torch.from_numpy(soft[i].astype(np.float32)),
                )
            )
    return out


def _soft_labels(cache: FeatureCache, indices: np.ndarray) -> np.ndarray:
    """The cache's consensus distributions, every clip of ``indices`` having one."""
    if cache.soft_labels is None:
        raise ConfigError(
            f"data.labels=soft: {cache.url} holds no soft labels (its labels: {cache.label_source}); "
            "extract with consensus labels (cremad: --dataset-option labels=consensus) or use data.labels=hard"
        )
    missing = [str(cache.ids[i]) for i in indices if np.isnan(cache.soft_labels[i]).any()]
    if missing:
        raise CacheError(
            f"data.labels=soft: {len(missing)} clips of this fold have no consensus label in {cache.url} "
            f"(e.g. {missing[:3]})"
        )
    return cache.soft_labels


MODALITIES = ("frames", "flow", "audio")


@dataclass
class FeatureStats:
    """Per-dimension mean and std of each modality over the TRAINING clips.

    Cached features have arbitrary scales (wav2vec2 has large outlier dimensions; random tiny
    encoders give values near 1e-3); standardising them with training statistics only (no
    information from validation or test) makes one learning rate work for every cache. The stats
    travel with the checkpoint (``feature_stats.safetensors``).
    """

    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]

    @classmethod
    def from_clips(cls, clips: list[ClipTensors], eps: float = 1e-6) -> FeatureStats:
        mean, std = {}, {}
        for m in MODALITIES:
            rows = torch.cat([getattr(c, m).float() for c in clips if len(getattr(c, m))])
            mean[m] = rows.mean(0)
            std[m] = rows.std(0, unbiased=False).clamp_min(eps)
        return cls(mean, std)

    @classmethod
    def identity(cls, clips: list[ClipTensors]) -> FeatureStats:
        """Mean 0, std 1: ``data.standardise=false`` feeds the cached features unchanged."""
        c = clips[0]
        dims = {m: getattr(c, m).shape[-1] for m in MODALITIES}
        return cls({m: torch.zeros(d) for m, d in dims.items()}, {m: torch.ones(d) for m, d in dims.items()})

    def apply(self, clips: list[ClipTensors]) -> None:
        """Standardise ``clips`` in place (kept as float16: standardised values are O(1))."""
        for c in clips:
            for m in MODALITIES:
                x = getattr(c, m)
                setattr(c, m, ((x.float() - self.mean[m]) / self.std[m]).to(torch.float16))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            **{f"mean.{m}": v for m, v in self.mean.items()},
            **{f"std.{m}": v for m, v in self.std.items()},
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> FeatureStats:
        return cls({m: t[f"mean.{m}"] for m in MODALITIES}, {m: t[f"std.{m}"] for m in MODALITIES})


def move_clips(clips: list[ClipTensors], device: str) -> None:
    """Every tensor of ``clips`` onto ``device``, in place (float16 features: a CREMA-D fold of the
    paper preset is about 2.5 GB), so that batches are padded and assembled there.

    Plain (synchronous) copies: done once per run, there is nothing for them to overlap with, and
    pinning would leave the fold's size of page-locked host memory in torch's pinned-block cache."""
    for c in clips:
        for name in ("frames", "flow", "audio", "targets", "soft"):
            value = getattr(c, name)
            if value is not None:
                setattr(c, name, value.to(device))


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = seqs[0].new_zeros((len(seqs), max(int(lengths.max()), 1), seqs[0].shape[-1]))
    for k, s in enumerate(seqs):
        out[k, : len(s)] = s
    return out, lengths


def collate(clips: list[ClipTensors]) -> dict[str, torch.Tensor | list]:
    """Pad a list of clips into a batch (float32 features, zero padding, lengths)."""
    frames, frame_lengths = _pad([c.frames for c in clips])
    flow, flow_lengths = _pad([c.flow for c in clips])
    audio, audio_lengths = _pad([c.audio for c in clips])
    return {
        "frames": frames.float(),
        "frame_lengths": frame_lengths,
        "flow": flow.float(),
        "flow_lengths": flow_lengths,
        "audio": audio.float(),
        "audio_lengths": audio_lengths,
        "labels": torch.tensor([c.label for c in clips], dtype=torch.long),
        "targets": torch.stack([c.targets for c in clips]),
        **({"soft": torch.stack([c.soft for c in clips])} if clips[0].soft is not None else {}),
        "index": torch.tensor([c.index for c in clips], dtype=torch.long),
        "clip_id": [c.clip_id for c in clips],
    }


def batches(clips: list[ClipTensors], cfg: DataConfig, shuffle: bool, seed: int) -> list[list[int]]:
    """Batch index lists. With ``bucket``, clips are sorted by frame count (ties broken at random)
    and cut into consecutive batches, whose order is then shuffled: little padding, random order."""
    rng = np.random.default_rng(seed)
    n = len(clips)
    if cfg.bucket:
        lengths = np.array([c.length for c in clips])
        order = np.lexsort((rng.random(n) if shuffle else np.arange(n), lengths))
    else:
        order = rng.permutation(n) if shuffle else np.arange(n)
    out = [order[k : k + cfg.batch_size].tolist() for k in range(0, n, cfg.batch_size)]
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2].extend(out.pop())  # a batch of one has no CCC (and no batch statistics)
    if shuffle:
        out = [out[k] for k in rng.permutation(len(out))]
    return out


def to_device(batch: dict, device: str) -> dict:
    """A collated batch on ``device``. Host tensors bound for CUDA (``pins_for``) are pinned and
    copied with ``non_blocking=True``, so the next batch is assembled while this one travels (torch
    keeps a pinned block from reuse until its copy ends); elsewhere a plain ``.to``."""
    return {k: pinned_to(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
