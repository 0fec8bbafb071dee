"""Writers of awkward inputs for tests: each takes a folder and a (RAVDESS-style) name, returns the path.

Real encodes through ``extract.synthetic.write_av_clip``; the face comes from its renderer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from aver.extract.synthetic import render_audio, render_frames, write_av_clip

FPS = 25
SR = 48000
W, H = 320, 240


def _face(n_frames: int, emotion: str = "neutral") -> np.ndarray:
    return render_frames(n_frames, FPS, W, H, actor=1, emotion=emotion)


def write_zero_byte(directory: str | Path, name: str) -> Path:
    """An empty file with a video name."""
    path = Path(directory) / name
    path.write_bytes(b"")
    return path


def write_truncated(directory: str | Path, name: str, source_mp4: str | Path, fraction: float = 0.4) -> Path:
    """A copy of ``source_mp4`` cut to ``fraction`` of its bytes."""
    data = Path(source_mp4).read_bytes()
    path = Path(directory) / name
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_not_video(directory: str | Path, name: str) -> Path:
    """A text file with a video name."""
    path = Path(directory) / name
    path.write_text("this is not a video, just text with an .mp4 name\n" * 20)
    return path


def write_video_without_audio(directory: str | Path, name: str, seconds: float = 1.0) -> Path:
    """A face clip with no audio stream."""
    return write_av_clip(Path(directory) / name, _face(int(round(seconds * FPS))), FPS, None)


def write_no_face_clip(directory: str | Path, name: str, seconds: float = 1.0) -> Path:
    """Moving coloured gradients plus noise (no face anywhere), with audio."""
    n = int(round(seconds * FPS))
    rng = np.random.default_rng(123)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = np.empty((n, H, W, 3), dtype=np.uint8)
    for i in range(n):
        phase = i * 0.3
        rgb = np.stack(
            [np.sin(xx / 23 + phase), np.cos(yy / 17 - phase), np.sin((xx + yy) / 31 + 2 * phase)], -1
        )
        rgb = 0.5 + 0.35 * rgb + rng.normal(0, 0.08, size=rgb.shape)
        frames[i] = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    return write_av_clip(Path(directory) / name, frames, FPS, render_audio(seconds, SR), SR)


def write_single_frame_clip(directory: str | Path, name: str) -> Path:
    """One face frame, with one frame's worth of audio (1 / FPS s)."""
    return write_av_clip(Path(directory) / name, _face(1), FPS, render_audio(1.0 / FPS, SR), SR)


def write_short_audio_clip(directory: str | Path, name: str) -> Path:
    """2 s of face video with only 0.3 s of audio."""
    return write_av_clip(Path(directory) / name, _face(2 * FPS, "happy"), FPS, render_audio(0.3, SR), SR)


def copy_clip(source: str | Path, directory: str | Path, name: str) -> Path:
    """A byte-identical copy under another name."""
    path = Path(directory) / name
    shutil.copyfile(source, path)
    return path
