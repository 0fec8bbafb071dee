"""Per-clip work, in two halves.

``prepare`` is the decode-bound half that runs ahead in threads: probe, decode + detect faces
(pass 1, keeping only a detection-size copy of each frame), track and smooth one face, crop
(keeping only the face region of each frame), and load 16 kHz audio. A clip within
``runtime.stream_frames`` frames whose decoded frames fit in ``runtime.decode_once_mb`` keeps them from
pass 1 for its crops, so it is decoded once (issue 21 #7); a longer or larger one is decoded a
second time for its crops, one frame at a time, so no full-resolution video is held in memory: a
4K clip costs one 4K frame (plus at most the budget), not 4K x frames. The crops are the same bits either way (the decoder
is deterministic and ``crop_stream`` sees the same frames). ``compute_group`` is the model-bound
half: optical flow, normalisation and both encoders, run on the frames of many clips packed into
fixed-size batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from aver.errors import ClipError
from aver.store import Capacity, ClipResult

from .config import ExtractConfig
from .datasets.base import ClipRecord
from .models import Models

log = logging.getLogger(__name__)


def decode_once_bytes(cfg: ExtractConfig) -> int:
    """The bytes of decoded frames a clip may keep from its detection pass for its crops
    (``runtime.decode_once_mb``, unset: the device's ``DEVICE_DEFAULTS``); a clip within this and
    ``runtime.stream_frames`` is decoded once, 0 decodes every clip twice. The CPU's default is the
    face-region chunk the crops already hold, so a clip's peak stays about one frame plus one chunk
    (issue 18: 4K clips are decoded twice); on a GPU decoding is what starves it (issue 21 #7)."""
    from .config import DEVICE_DEFAULTS

    mb = cfg.runtime.decode_once_mb
    if mb is None:
        mb = DEVICE_DEFAULTS["cuda" if str(cfg.runtime.device).startswith("cuda") else "cpu"][
            "decode_once_mb"
        ]
    return int(mb) << 20


@dataclass
class Prepared:
    """A decoded clip ready for the models. T frames of S x S face crops."""

    index: int
    record: ClipRecord
    crops: object  # torch.uint8 [T, 3, S, S] on the run's device; None for a long (streamed) clip
    timestamps: np.ndarray  # float32 [T] seconds
    boxes: np.ndarray  # float32 [T, 4] smoothed crop boxes, source pixels
    probs: np.ndarray  # float32 [T]
    mask: np.ndarray  # bool [T]
    fps: float
    audio: np.ndarray  # float32 [S_audio] 16 kHz mono
    notes: list[str]  # what was cut or kept, recorded in clips/note
    audio_features: object = None  # wav2vec2 output when encoded here (CPU: see ``encode_audio_early``)

    @property
    def n_frames(self) -> int:
        return len(self.timestamps)


def prepare(i: int, rec: ClipRecord, cfg: ExtractConfig, models: Models, cap: Capacity) -> Prepared:
    """Decode, detect, track, crop and load audio for one clip. Raises ``ClipError`` on bad input."""
    from .faces import smooth_boxes, track_face
    from .media import load_audio, probe_video

    rt = cfg.runtime
    info = probe_video(rec.video)
    max_seconds = cfg.max_seconds
    notes: list[str] = []
    dets, stamps, hw, frames = _detect_pass(rec.video, cfg, models, cap, notes)
    n = len(stamps)
    if n < cfg.flow.window + 1:
        raise ClipError(
            rec.video, f"only {n} frame(s); optical flow needs at least {cfg.flow.window + 1}", "decode"
        )
    track = track_face(dets, hw, rec.video)
    boxes = smooth_boxes(track.boxes, cfg.face.smooth_window, cfg.face.margin, hw)
    # a long clip's crops are made later, window by window, into a temporary file (streaming.py);
    # a short one's from the frames kept by the detection pass, else from a second decoding
    crops = None if n > rt.stream_frames else _crop_pass(rec.video, boxes, n, cfg, models.lock, frames=frames)
    del frames  # emptied by the crops; a streamed clip's are dropped here
    fps = info.fps if info.fps > 0 else (n - 1) / max(stamps[-1] - stamps[0], 1e-6)
    audio = load_audio(rec.audio or rec.video, cfg.audio.sample_rate, max_seconds)
    video_s = n / fps
    if len(audio) / cfg.audio.sample_rate < cfg.min_audio_ratio * video_s:
        raise ClipError(
            rec.audio or rec.video,
            f"audio lasts {len(audio) / cfg.audio.sample_rate:.2f} s but the video "
            f"{video_s:.2f} s (below min_audio_ratio={cfg.min_audio_ratio})",
            "audio",
        )
    return Prepared(
        i,
        rec,
        crops,
        np.asarray(stamps, np.float32),
        boxes.astype(np.float32),
        track.prob.astype(np.float32),
        track.mask.astype(bool),
        float(fps),
        audio,
        notes,
        models.audio(audio) if encode_audio_early(cfg) else None,
    )


def _detect_pass(path: str, cfg: ExtractConfig, models: Models, cap: Capacity, notes: list[str]):
    """First decoding pass: ``(detections per frame, timestamps, (H, W), frames)``, at most
    ``cap.frames`` frames. Frames are decoded one at a time; detection keeps only their
    detection-size copy (``DetectionPass``). ``frames`` is the decoded frames, kept for the crops
    while the clip is within ``runtime.stream_frames`` frames and ``decode_once_bytes``, else
    ``None`` (they are dropped as soon as either is passed, so memory stays bounded)."""
    from .faces import DetectionPass
    from .media import iter_frames

    rt = cfg.runtime
    run = DetectionPass(models.detector, cfg.face.detect_every, rt.detect_batch, rt.decode_batch, models.lock)
    stamps, hw, budget = [], None, decode_once_bytes(cfg)
    frames: list[np.ndarray] | None = []
    for rgb, t in iter_frames(path, cfg.max_seconds, notes=notes):
        hw = rgb.shape[:2]
        run.add(rgb)
        stamps.append(t)
        budget -= rgb.nbytes
        if frames is not None and (len(frames) == rt.stream_frames or budget < 0):
            frames = None  # over a limit: dropped before this frame would be kept
        if frames is not None:
            frames.append(rgb)  # a fresh array per frame (media.iter_frames): safe to keep
        if len(stamps) >= cap.frames:
            log.warning("%s: longer than the store capacity; cut at %d frames", path, cap.frames)
            notes.append(
                f"cut at {cap.frames} frames ({stamps[-1]:.2f} s): the store's frame capacity, planned from "
                "container headers, is shorter than this clip"
            )
            break
    return run.finish(), stamps, hw, frames


def encode_audio_early(cfg: ExtractConfig) -> bool:
    """On a CPU with single-threaded kernels (``runtime.threads=1``) wav2vec2 runs in the decode-
    ahead threads, beside detection, so that they and the image encoders (the main thread) keep both
    cores busy; on a GPU it stays with the other models."""
    rt = cfg.runtime.resolved()
    return rt.device == "cpu" and rt.threads == 1


def iter_crops(
    path: str, boxes: np.ndarray, n: int, cfg: ExtractConfig, lock, frames: list[np.ndarray] | None = None
):
    """The crops of the ``n`` smoothed boxes, ``uint8 [b, 3, S, S]`` chunks on the run's device in
    frame order (``faces.crop_stream``: one frame plus a chunk of face regions in memory), from
    ``frames`` (the detection pass's, emptied as they are cropped) or else a second decoding pass.
    Raises ``ClipError`` when fewer than ``n`` frames decode (the first pass saw ``n``)."""
    from .faces import crop_stream
    from .media import iter_frames

    if frames is None:
        source = (rgb for rgb, _ in iter_frames(path, cfg.max_seconds))
    else:
        source = _drain(frames)
    seen = 0
    for crops in crop_stream(
        source, boxes[:n], cfg.face.crop_size, cfg.runtime.decode_batch, cfg.runtime.device, lock
    ):
        seen += len(crops)
        yield crops
    if seen != n:
        raise ClipError(path, f"second decoding pass gave {seen} frames, the first {n}", "decode")


def _drain(frames: list[np.ndarray]):
    """The items of ``frames`` in order, each released (removed from the list) once handed out."""
    frames.reverse()
    while frames:
        yield frames.pop()


def _crop_pass(
    path: str,
    boxes: np.ndarray,
    n: int,
    cfg: ExtractConfig,
    lock,
    keep: np.ndarray | None = None,
    frames: list[np.ndarray] | None = None,
):
    """``uint8 [n, 3, S, S]`` crops of the smoothed boxes (``iter_crops``, from ``frames`` when
    given), on the run's device; with ``keep`` (sorted frame indices) only those frames' crops,
    computed exactly as in a full pass."""
    import torch

    out, seen = [], 0
    for crops in iter_crops(path, boxes, n, cfg, lock, frames):
        if keep is not None:
            here = keep[(keep >= seen) & (keep < seen + len(crops))] - seen
            out.append(crops[torch.as_tensor(here, dtype=torch.long, device=crops.device)])
        else:
            out.append(crops)
        seen += len(crops)
    return torch.cat(out)


def compute_group(
    group: list[Prepared], cfg: ExtractConfig, models: Models, cap: Capacity
) -> list[ClipResult]:
    """Flow and features for every clip of ``group``: short clips batched across clip boundaries,
    long ones (prepared without crops) streamed in windows (``streaming.compute_long``)."""
    from .streaming import compute_long

    encode_audio(group, models)  # all clips' wav2vec2 in length-sorted batches, streamed ones too
    short = [p for p in group if p.crops is not None]
    done = (
        dict(zip((id(p) for p in short), _compute_short(short, cfg, models, cap), strict=True))
        if short
        else {}
    )
    return [done[id(p)] if p.crops is not None else compute_long(p, cfg, models, cap) for p in group]


def _compute_short(
    group: list[Prepared], cfg: ExtractConfig, models: Models, cap: Capacity
) -> list[ClipResult]:
    import torch

    from .flow import flow_pairs, flow_to_image, normalise_flow

    rt = cfg.runtime
    lengths = [p.n_frames for p in group]
    crops = torch.cat([p.crops for p in group])  # uint8 [sum T, 3, S, S]
    frame_feats = models.image.encode_batched(crops, rt.image_batch).split(lengths)

    offsets = np.cumsum([0, *lengths[:-1]])
    pairs = [
        flow_pairs(n, cfg.flow.window, cfg.flow.stride) + int(o)
        for n, o in zip(lengths, offsets, strict=True)
    ]
    n_pairs = [len(p) for p in pairs]
    idx = torch.cat(pairs).to(crops.device)
    flows = torch.cat(
        [
            models.flow(
                crops[idx[k : k + rt.flow_batch, 0]], crops[idx[k : k + rt.flow_batch, 1]], keep_device=True
            )
            for k in range(0, len(idx), rt.flow_batch)
        ]
    )  # float32 [sum P, 2, S, S] on the run's device: normalised, imaged and encoded there
    images = torch.cat(
        [
            flow_to_image(normalise_flow(f, cfg.flow.eps, cfg.flow.sigma), cfg.flow.image_clip)
            for f in flows.split(n_pairs)
        ]
    )
    flow_feats = models.image.encode_batched(images, rt.image_batch).split(n_pairs)
    return [
        ClipResult(
            frame_features=_f16(ff, p.record.video, "frame"),
            flow_features=_f16(of, p.record.video, "flow"),
            **audio_result(p, models, cap),
        )
        for p, ff, of in zip(group, frame_feats, flow_feats, strict=True)
    ]


def encode_audio(group: list[Prepared], models: Models) -> None:
    """wav2vec2 for the clips of ``group`` not encoded yet, in one ``encode_many`` call: the clips are
    batched across the group by length (``length_batches``), not in the group's order."""
    todo = [p for p in group if p.audio_features is None]
    for p, feats in zip(todo, models.audio.encode_many([p.audio for p in todo]), strict=True):
        p.audio_features = feats


def audio_result(p: Prepared, models: Models, cap: Capacity) -> dict:
    """The audio features and the per-frame face track of a clip, as ``ClipResult`` fields."""
    audio = p.audio_features if p.audio_features is not None else models.audio(p.audio)
    if len(audio) > cap.audio:
        p.notes.append(
            f"audio cut at {cap.audio} of {len(audio)} wav2vec2 frames: the store's audio capacity"
        )
        audio = audio[: cap.audio]
    return {
        "audio_features": _f16(audio, p.record.audio or p.record.video, "audio"),
        "timestamps": p.timestamps,
        "face_box": p.boxes,
        "face_prob": p.probs,
        "face_mask": p.mask,
        "fps": p.fps,
        "note": "; ".join(p.notes),
    }


def _f16(x, path: str, what: str) -> np.ndarray:
    arr = x.detach().float().cpu().numpy()
    if not np.isfinite(arr).all():
        raise ClipError(path, f"{what} features are not finite (NaN/inf)", "encode")
    big = float(np.abs(arr).max(initial=0.0))
    if big > 65504.0:
        raise ClipError(path, f"{what} features overflow float16 (max |x| = {big:.3g})", "encode")
    return arr.astype(np.float16)
