"""End-to-end inputs (``inputs/*``, layout 2): face crops and the 16 kHz waveform of each clip.

The crops are the pipeline's own: the smoothed face track cropped at ``face.crop_size`` (the crops
the features were computed from), ``inputs.crop_frames`` of them sampled uniformly, resized with
antialiasing to ``inputs.crop_size`` and stored channels-last as ``uint8``. The waveform is the
16 kHz mono audio the wav2vec2 encoder heard, as 16-bit PCM. Both are written with the clip during
extraction; a store whose features are done gets them later from its own recorded face boxes
(``fill_inputs``), so adding them never recomputes a feature and gives the same crops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import numpy as np

from aver import layout as L
from aver.errors import CacheMismatchError, ClipError
from aver.store import CacheWriter, Capacity, ClipInputs

from .config import ExtractConfig, InputsConfig

log = logging.getLogger(__name__)


def crop_indices(n: int, k: int) -> np.ndarray:
    """``k`` frame indices of ``n`` sampled uniformly (first and last included), or every frame
    when ``k`` is 0 or at least ``n``. Always distinct and sorted."""
    if k == 0 or k >= n:
        return np.arange(n, dtype=np.int64)
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)


def resize_crops(crops, size: int) -> np.ndarray:
    """``uint8 [K, 3, S, S]`` torch crops -> ``uint8 [K, size, size, 3]`` numpy (antialiased)."""
    import torch

    if crops.shape[-1] != size:
        x = torch.nn.functional.interpolate(
            crops.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        crops = x.round_().clamp_(0, 255).to(torch.uint8)
    return crops.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """float waveform in [-1, 1] -> int16 PCM (``L.WAVE_SCALE``), clipped."""
    return np.clip(np.round(np.asarray(wave, np.float64) * L.WAVE_SCALE), -32768, 32767).astype(np.int16)


def inputs_meta(cfg: ExtractConfig, cap: Capacity, audio_rate_hz: float) -> dict[str, Any]:
    """``attrs.aver.inputs`` of a store getting inputs: the settings and the capacities they imply."""
    i = cfg.inputs
    k = min(i.crop_frames, cap.frames) if i.crop_frames else cap.frames
    seconds = cap.audio / max(audio_rate_hz, 1e-9)
    return {
        "crops": i.crops,
        "crop_frames": i.crop_frames,
        "crop_size": i.crop_size,
        "wave": i.wave,
        "sample_rate": cfg.audio.sample_rate,
        "crop_frames_capacity": k if i.crops else 0,
        "wave_capacity": int(math.ceil(seconds * cfg.audio.sample_rate)) + cfg.audio.sample_rate
        if i.wave
        else 0,
    }


SETTINGS = ("crops", "crop_frames", "crop_size", "wave")


def ensure_inputs(writer: CacheWriter, cfg: ExtractConfig, audio_rate_hz: float) -> ExtractConfig:
    """Give the store the inputs ``cfg`` asks for, or adopt the ones it holds.

    A store without inputs gets the arrays (and layout 2) when the run asks for any. A store with
    inputs keeps them: a run that does not mention them fills the same ones; a run that asks for
    other settings is refused with the differences. Returns ``cfg`` with the store's settings.
    """
    have = writer.meta().get("inputs")
    if have:
        stored = {k: have[k] for k in SETTINGS}
        wanted = {k: getattr(cfg.inputs, k) for k in SETTINGS}
        if cfg.inputs.any and stored != wanted:
            diff = "; ".join(
                f"inputs.{k}: {stored[k]!r} -> {wanted[k]!r}" for k in SETTINGS if stored[k] != wanted[k]
            )
            raise CacheMismatchError(
                f"{writer.url} holds end-to-end inputs made with other settings ({diff}); pass the "
                "store's settings, write to another --cache, or --overwrite"
            )
        import dataclasses

        return dataclasses.replace(cfg, inputs=InputsConfig(**stored))
    if cfg.inputs.any:
        writer.add_inputs(inputs_meta(cfg, writer.capacity(), audio_rate_hz))
        log.info("%s: end-to-end inputs added (%s)", writer.url, writer.meta()["inputs"])
    return cfg


def clip_inputs(p, cfg: ExtractConfig, meta: dict[str, Any], lock=None) -> ClipInputs:
    """The inputs of a prepared clip (``extract.clip.Prepared``): its crops (from ``p.crops``, or a
    decoding pass for a streamed clip) and its waveform, cut to the store's capacities with a note."""
    crops = index = None
    if meta["crops"]:
        index = crop_indices(p.n_frames, int(meta["crop_frames"]))[: int(meta["crop_frames_capacity"])]
        if p.crops is not None:
            import torch

            picked = p.crops[torch.as_tensor(index, device=p.crops.device)]
        else:
            from .clip import _crop_pass

            picked = _crop_pass(
                p.record.video, p.boxes, p.n_frames, cfg, lock or contextlib.nullcontext(), index
            )
        crops = resize_crops(picked, int(meta["crop_size"]))
    wave = None
    if meta["wave"]:
        wave = to_pcm16(p.audio)
        if len(wave) > int(meta["wave_capacity"]):
            p.notes.append(
                f"waveform cut at {meta['wave_capacity']} of {len(wave)} samples: the store's capacity"
            )
            wave = wave[: int(meta["wave_capacity"])]
    return ClipInputs(crops=crops, crop_index=index, wave=wave)


def fill_inputs(
    indices: list[int], index, cfg: ExtractConfig, writer: CacheWriter, progress: bool
) -> dict[str, str]:
    """Inputs for committed clips that lack them, from the raw media and the store's own face
    boxes (no detection, no features recomputed). Returns ``{clip id: cause}`` of the failures."""
    from tqdm import tqdm

    meta = writer.meta()["inputs"]
    failures: dict[str, str] = {}
    t0 = time.perf_counter()
    for i in tqdm(indices, unit="clip", desc="inputs", disable=not progress, dynamic_ncols=True):
        rec = index.clips[i]
        try:
            writer.write_inputs(i, clip_inputs(_stored_clip(writer, i, rec, cfg), cfg, meta))
        except ClipError as e:
            failures[rec.clip_id] = str(e)
        except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run
            log.debug("inputs of %s failed", rec.video, exc_info=True)
            failures[rec.clip_id] = str(ClipError(rec.video, f"{type(e).__name__}: {e}", "inputs"))
        if rec.clip_id in failures:
            writer.write_inputs_failure(i)
            log.warning("inputs of %s: %s", rec.clip_id, failures[rec.clip_id])
    if indices:
        log.info(
            "inputs filled for %d clips in %.1f s", len(indices) - len(failures), time.perf_counter() - t0
        )
    return failures


def _stored_clip(writer: CacheWriter, i: int, rec, cfg: ExtractConfig):
    """A ``Prepared``-like clip from the store (boxes, frame count) and the raw audio."""
    from types import SimpleNamespace

    from .media import load_audio

    g = writer.group
    n = int(g[L.N_FRAMES][i])
    boxes = g[L.FACE_BOX][i][:n]
    audio = (
        load_audio(rec.audio or rec.video, cfg.audio.sample_rate, cfg.max_seconds)
        if writer.meta()["inputs"]["wave"]
        else None
    )
    return SimpleNamespace(record=rec, n_frames=n, boxes=boxes, crops=None, audio=audio, notes=[])
