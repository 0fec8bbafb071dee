"""Decoding video frames and audio with PyAV, one clip at a time, in bounded memory.

Every per-clip failure is a ``ClipError`` naming the file and the cause (``stage="decode"`` for
video, ``stage="audio"`` for audio), so a run records it and goes on with the next clip.

Frames are returned upright: a display-matrix rotation (phone video) is applied when decoding.

Truncated / corrupt video policy (``iter_frames``, ``iter_video_frames``): decoding stops at the
first decoder error, or ends quietly where a cut-off file runs out of packets. If no frame decoded,
or fewer than ``min_decoded_ratio`` (default 0.5) of the frames the container announces, the clip
fails with ``ClipError`` (raised after the frames already yielded, so a caller must drop what it
received). Otherwise the frames decoded so far are kept and a warning is logged: a clip that lost
a few frames at its end is still worth its features. Lost frames show as gaps in the timestamps.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from aver.errors import ClipError

log = logging.getLogger(__name__)


@dataclass
class VideoInfo:
    """Container/stream metadata read from the header (no full decode).

    ``n_frames`` is the container's count or ``round(duration_s * fps)``; 0 when unknown.
    Durations are in seconds; ``audio_duration_s`` is 0.0 without an audio stream.
    """

    path: str
    width: int
    height: int
    fps: float
    n_frames: int
    duration_s: float
    has_audio: bool
    audio_duration_s: float


def _check_file(path: str, stage: str) -> None:
    if not os.path.exists(path):
        raise ClipError(path, "file not found", stage)
    if not os.path.isfile(path):
        raise ClipError(path, "not a regular file", stage)
    if os.path.getsize(path) == 0:
        raise ClipError(path, "file is empty (0 bytes)", stage)


def _open(path: str, stage: str):
    """Open a container for reading; every failure becomes a ClipError."""
    import av

    _check_file(path, stage)
    try:
        return av.open(path, mode="r")
    except av.error.FFmpegError as e:
        kind = "video" if stage == "decode" else "media"
        raise ClipError(path, f"not a readable {kind} container: {e}", stage) from e


def _video_stream(container, path: str):
    if not container.streams.video:
        raise ClipError(path, "has no video stream", "decode")
    return container.streams.video[0]


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _stream_duration(stream, container) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return 0.0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a clip's header: size, frame rate, frame count, durations, audio presence.

    Raises ``ClipError(stage="decode")`` for a missing or empty file, an unreadable container or
    a container without a video stream.
    """
    path = str(path)
    with _open(path, "decode") as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        duration = _stream_duration(stream, container)
        n_frames = int(stream.frames or 0) or (int(round(duration * fps)) if fps > 0 else 0)
        audio = container.streams.audio
        return VideoInfo(
            path=path,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            fps=fps,
            n_frames=n_frames,
            duration_s=duration,
            has_audio=bool(audio),
            audio_duration_s=_stream_duration(audio[0], container) if audio else 0.0,
        )


def _decode_failed(path: str, err: Exception, n: int, expected: int, min_ratio: float, notes: list) -> None:
    """Apply the truncation policy of the module docstring: raise, or keep ``n`` frames with a note."""
    of = f" of {expected} announced" if expected else ""
    if n == 0 or (expected and n < min_ratio * expected):
        raise ClipError(path, f"video decoding failed after {n}{of} frames: {err}", "decode") from err
    log.warning("%s: video decoding stopped after %d%s frames (%s); keeping them", path, n, of, err)
    notes.append(f"decoding stopped after {n}{of} frames ({err}); kept (policy: at least {min_ratio:.0%})")


def _upright(frame) -> np.ndarray:
    """RGB ``[H, W, 3]`` as the video is meant to be shown: phones store portrait video as landscape
    frames plus a display matrix ("rotate=90"), which players apply and raw decoding does not."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter = round(float(getattr(frame, "rotation", 0) or 0) / 90.0) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=quarter)) if quarter else rgb


class _Clock:
    """Presentation times that only go forward. A stream whose timestamps restart or repeat (MPEG-TS
    files joined end to end, a camera's wrapped clock) continues from the previous frame, one frame
    period later, with a note: the stored timeline and every duration derived from it stay true."""

    def __init__(self, fps: float, notes: list) -> None:
        self.step = 1.0 / fps if fps > 0 else 0.04
        self.shift, self.last, self.notes = 0.0, None, notes

    def __call__(self, raw: float, n: int) -> float:
        t = raw + self.shift
        if self.last is not None and t <= self.last:
            self.shift += self.last + self.step - t
            self.notes.append(
                f"timestamps restart at frame {n} ({raw:.2f} s after {self.last:.2f} s; a concatenated "
                "stream?): times continue from the previous frame"
            )
            t = self.last + self.step
        self.last = t
        return t


def _frames_with_times(
    container, stream, path: str, expected: int, min_ratio: float, max_seconds, notes: list
):
    """Yield ``(rgb uint8 [H, W, 3], t seconds)`` per decoded frame; applies the truncation policy."""
    import av

    fps = _stream_fps(stream)
    tb = stream.time_base
    origin = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    size, n, clock = None, 0, _Clock(fps, notes)
    decoder = container.decode(stream)
    while True:
        try:
            frame = next(decoder)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            _decode_failed(path, e, n, expected, min_ratio, notes)
            return
        if frame.time is not None:
            t = clock(frame.time - origin, n)
        elif fps > 0:
            t = n / fps  # no pts: assume a constant rate from the stream's declared fps
        else:
            raise ClipError(
                path, "frames carry no timestamps and the stream declares no frame rate", "decode"
            )
        if max_seconds is not None and t >= max_seconds:
            return
        size = size or (frame.width, frame.height)
        if (frame.width, frame.height) != size:
            # Mid-stream resolution change (rare): keep one shape per clip.
            frame = frame.reformat(width=size[0], height=size[1])
        n += 1
        yield _upright(frame), t


def iter_frames(
    path: str | os.PathLike,
    max_seconds: float | None = None,
    min_decoded_ratio: float = 0.5,
    notes: list[str] | None = None,
) -> Iterator[tuple[np.ndarray, float]]:
    """Stream a clip's frames one at a time, at its native rate: ``(rgb, t)`` with ``rgb`` uint8
    [H, W, 3] (a fresh array the caller may keep) and ``t`` the presentation time in seconds from
    the video stream's start. Memory is one decoded frame, whatever the resolution: a caller that
    keeps only what it needs of each frame (a downscaled copy, a face region) never holds a
    full-resolution video. Frames at or after ``max_seconds`` are not decoded.

    Raises ``ClipError(stage="decode")`` as ``probe_video`` does, when no frame decodes, and on a
    truncated/corrupt stream as the module docstring describes (``min_decoded_ratio``; raised after
    the frames already yielded, so a caller must drop what it received). A clip kept although
    frames were lost gets a line appended to ``notes`` (recorded in the store).
    """
    notes = notes if notes is not None else []
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0; got {max_seconds}")
    path = str(path)
    n = 0
    with _open(path, "decode") as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"  # frame + slice threads; output is still deterministic
        fps = _stream_fps(stream)
        expected = int(stream.frames or 0)
        if expected and max_seconds is not None and fps > 0:
            expected = min(expected, math.ceil(max_seconds * fps - 1e-6))
        for rgb, t in _frames_with_times(
            container, stream, path, expected, min_decoded_ratio, max_seconds, notes
        ):
            n += 1
            yield rgb, t
    _check_count(path, n, expected, min_decoded_ratio, notes)


def _check_count(path: str, n: int, expected: int, min_ratio: float, notes: list[str]) -> None:
    """The end-of-stream half of the truncation policy: no frame, or too few of those announced."""
    if n == 0:
        raise ClipError(path, "no video frame could be decoded", "decode")
    # A cut-off file can also end quietly, short of the frames its header announces.
    if expected and n < min_ratio * expected:
        raise ClipError(
            path, f"video stream ended after {n} of {expected} announced frames (truncated file?)", "decode"
        )
    if expected and n < expected - 1:
        log.warning("%s: decoded %d frames, the container announced %d", path, n, expected)
        if not notes:
            notes.append(
                f"decoded {n} of {expected} announced frames; kept (policy: at least {min_ratio:.0%})"
            )


def iter_video_frames(
    path: str | os.PathLike,
    batch_size: int,
    max_seconds: float | None = None,
    min_decoded_ratio: float = 0.5,
    notes: list[str] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream a clip's frames at its native rate, ``batch_size`` at a time (``iter_frames`` batched).

    Yields ``(frames, timestamps_s)``: frames uint8 [B, H, W, 3] RGB (B <= ``batch_size``; only
    the last batch is shorter) and presentation times float64 [B] in seconds from the video
    stream's start. Memory is one batch at full resolution (B x H x W x 3 bytes: 1.6 GB for 64 4K
    frames), so the extraction pipeline uses ``iter_frames``; this is for small clips and tests.
    Deterministic: two iterations give identical frames, whatever the batch size. Errors and
    ``notes`` as ``iter_frames``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    frames = timestamps = None
    k = 0
    for rgb, t in iter_frames(path, max_seconds, min_decoded_ratio, notes):
        if frames is None:
            frames = np.empty((batch_size, *rgb.shape), dtype=np.uint8)
            timestamps = np.empty(batch_size, dtype=np.float64)
        frames[k], timestamps[k] = rgb, t
        k += 1
        if k == batch_size:
            yield frames, timestamps
            # Fresh buffers: the caller may keep the batch it was given.
            frames, timestamps, k = np.empty_like(frames), np.empty_like(timestamps), 0
    if k:
        yield frames[:k].copy(), timestamps[:k].copy()


def load_audio(
    path: str | os.PathLike, sample_rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """Decode the first audio stream of a video or audio file to mono float32 [S] in [-1, 1].

    Resampled to ``sample_rate`` Hz (libswresample); S ~= duration * sample_rate, cut to
    ``max_seconds`` when given. AAC streams may decode up to one codec frame (1024 samples at the
    source rate) longer than the audio that was encoded, because of encoder padding.
    Raises ``ClipError(stage="audio")`` for a missing/empty/unreadable file, a file without an
    audio track, or audio that decodes to nothing. A decoder error after some audio decoded stops
    decoding with a warning and returns what was decoded (callers check the length).
    """
    import av

    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1; got {sample_rate}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0; got {max_seconds}")
    path = str(path)
    limit = int(round(max_seconds * sample_rate)) if max_seconds is not None else None
    chunks: list[np.ndarray] = []
    total = 0
    with _open(path, "audio") as container:
        if not container.streams.audio:
            raise ClipError(path, "has no audio track", "audio")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].size
                if limit is not None and total >= limit:
                    break
        except av.error.FFmpegError as e:
            if total == 0:
                raise ClipError(path, f"audio decoding failed: {e}", "audio") from e
            log.warning(
                "%s: audio decoding stopped after %.2f s (%s); keeping it", path, total / sample_rate, e
            )
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if limit is not None:
        audio = audio[:limit]
    if audio.size == 0:
        raise ClipError(path, "decoded audio is empty", "audio")
    # A downmix of loud stereo can overshoot full scale.
    return np.clip(audio, -1.0, 1.0, out=audio).astype(np.float32, copy=False)
