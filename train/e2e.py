"""The data path of the systems that train on inputs (``trains_on = "inputs"``): cached face crops
and waveforms (``inputs/*``) as batches on the device.

Clips are read once per run through ``FeatureCache.read_inputs`` (digests checked) and kept as
``uint8`` crops of the model's ``n_frames`` frames (uniformly sampled from the stored ones) and
``int16`` waveforms; with ``resident`` on a GPU they live on the device. A batch moves the
``uint8`` crops to the device once, where they are augmented (crop, flip, brightness; training
only, and only where the system or ``--set augment=true`` asks), resized to the model's ``image_size`` and normalised (``aver.train.augment``), and the
waveform becomes float. Spectrograms and MFCCs are computed inside the models, on the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from aver.cache import FeatureCache
from aver.errors import CacheError
from aver.layout import WAVE_SCALE
from aver.utils import pinned_to

log = logging.getLogger(__name__)


@dataclass
class InputClip:
    """One clip's end-to-end inputs (what ``ClipTensors`` is for the features)."""

    index: int
    clip_id: str
    crops: torch.Tensor | None  # uint8 [T, S, S, 3]; None: read from ``source`` when batched
    wave: torch.Tensor  # int16 [W]
    label: int
    targets: torch.Tensor
    soft: torch.Tensor | None = None
    source: FeatureCache | None = None  # the cache its crops are read from (crops not in memory)
    n_frames: int = 0

    @property
    def length(self) -> int:
        return int(self.wave.shape[0])


def frame_choice(stored: int, wanted: int) -> np.ndarray:
    """``wanted`` indices spread uniformly over ``stored`` crops (repeated when fewer are stored)."""
    if stored < 1:
        raise ValueError("no crops stored")
    return np.round(np.linspace(0, stored - 1, wanted)).astype(np.int64)


def check_inputs(cache: FeatureCache, spec, system: str) -> None:
    """Refuse a cache without the inputs ``system`` needs, saying how to add them."""
    have = cache.inputs
    need = [k for k in ("crops", "wave") if not have.get(k)]
    if need:
        raise CacheError(
            f"{cache.url} holds no {' or '.join(need)} for end-to-end training ({system}); add them to the "
            "store (features are kept): aver extract ... --inputs crops,wave"
        )
    size = int(have.get("crop_size", 0))
    if have.get("crops") and size < spec.image_size:
        log.warning(
            "%s stores %d px crops; %s wants %d px: they are upsampled",
            cache.url,
            size,
            system,
            spec.image_size,
        )


MEMORY_BUDGET = 4 * 2**30  # bytes of crops a fold may hold in memory when not told (inputs_in_memory)


def crops_in_memory(cache: FeatureCache, n_clips: int, n_frames: int, wanted: bool | None) -> bool:
    """Whether a fold's crops are held in memory: as asked, or when they fit ``MEMORY_BUDGET``."""
    size = int(cache.inputs.get("crop_size", 0))
    need = n_clips * n_frames * size * size * 3
    if wanted is None:
        wanted = need <= MEMORY_BUDGET
        if not wanted:
            log.info(
                "crops of %d clips need %.1f GiB: read from the cache batch by batch", n_clips, need / 2**30
            )
    return wanted


def load_input_clips(
    cache: FeatureCache,
    indices: np.ndarray,
    n_frames: int,
    labels: str = "hard",
    chunk: int = 32,
    in_memory: bool | None = True,
) -> list[InputClip]:
    """Clips ``indices`` (sorted by cache row) with ``n_frames`` crops each (or read per batch,
    ``in_memory`` false or too big) and their waveforms."""
    out: list[InputClip] = []
    order = np.sort(np.asarray(indices, dtype=np.int64))
    keep = crops_in_memory(cache, len(order), n_frames, in_memory)
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        got = cache.read_inputs(idx)
        for k, i in enumerate(idx):
            crops = _chosen(got["crops"][k], n_frames) if keep else None
            soft = cache.soft_labels[i] if labels == "soft" and cache.soft_labels is not None else None
            out.append(
                InputClip(
                    index=int(i),
                    clip_id=str(cache.ids[i]),
                    crops=None if crops is None else torch.from_numpy(crops),
                    wave=torch.from_numpy(got["wave"][k]),
                    label=int(cache.labels[i]),
                    targets=torch.from_numpy(cache.targets[i].astype(np.float32)),
                    soft=None if soft is None else torch.from_numpy(soft.astype(np.float32)),
                    source=None if keep else cache,
                    n_frames=n_frames,
                )
            )
    return out


def _chosen(crops: np.ndarray, n_frames: int) -> np.ndarray:
    """``n_frames`` of a clip's stored crops, spread uniformly (none stored: none)."""
    return np.ascontiguousarray(crops[frame_choice(len(crops), n_frames)] if len(crops) else crops)


def batch_crops(clips: list[InputClip]) -> torch.Tensor:
    """``uint8 [B, T, S, S, 3]`` crops of ``clips``: from memory, or one bulk read from their cache."""
    if clips[0].crops is not None:
        return torch.stack([c.crops for c in clips])
    # verified when the fold was loaded: no digest on the hot path
    got = clips[0].source.read_inputs(np.array([c.index for c in clips]), verify=False)["crops"]
    return torch.from_numpy(np.stack([_chosen(x, c.n_frames) for x, c in zip(got, clips, strict=True)]))


def move_input_clips(clips: list[InputClip], device: str) -> None:
    """The clips' tensors onto ``device`` once (uint8 crops, int16 waveforms), in place."""
    for c in clips:
        for name in ("crops", "wave", "targets", "soft"):  # crops read per batch stay in the cache
            value = getattr(c, name)
            if value is not None:
                setattr(c, name, value.to(device))


def collate_inputs(
    clips: list[InputClip], device: str, image_size: int, train: bool, generator: torch.Generator | None
) -> dict:
    """A batch on ``device``: ``video`` float ``[B, T, 3, S, S]`` (augmented when ``train``),
    ``wave`` float ``[B, L]`` zero-padded with ``wave_lengths``, labels, targets and ids."""
    from .augment import video_batch

    lengths = torch.tensor([c.length for c in clips], dtype=torch.long)
    pcm = clips[0].wave.new_zeros((len(clips), max(int(lengths.max()), 1)))  # padded where the clips are
    for k, c in enumerate(clips):
        pcm[k, : c.length] = c.wave
    wave = pinned_to(pcm, device).float() / WAVE_SCALE  # one copy per batch
    batch = {
        "wave": wave,
        "wave_lengths": lengths.to(device),
        "labels": torch.tensor([c.label for c in clips], dtype=torch.long, device=device),
        "targets": torch.stack([c.targets for c in clips]).to(device),
        "index": torch.tensor([c.index for c in clips], dtype=torch.long, device=device),
        "clip_id": [c.clip_id for c in clips],
    }
    if clips[0].soft is not None:
        batch["soft"] = torch.stack([c.soft for c in clips]).to(device)
    crops = batch_crops(clips)
    if crops.numel():
        crops = pinned_to(crops, device)  # uint8, one copy per batch
        batch["video"] = video_batch(crops, image_size, train, generator)
    return batch
