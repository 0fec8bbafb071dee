"""An embedded synthetic corpus in RAVDESS layout: small, deterministic, learnable, made in seconds.

Every clip shows a real face photo (``skimage.data.astronaut()``, which MTCNN finds with p > 0.99)
composited onto a per-actor background. Speaker effects (background colour and texture, face scale,
tint, position, voice pitch) depend on the actor; the emotion sets how the head moves and how the
"voice" (a harmonic tone) sounds, so classes are learnable from frames, from optical flow and from
audio. Content is a pure function of ``(spec.seed, actor, emotion, clip index)``; the encoded bytes
may differ between encoder builds.

Files are named like RAVDESS speech AV clips: ``Actor_AA/01-01-EE-01-SS-RR-AA.mp4``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aver.utils import atomic_write, atomic_write_text, sha256_file

from .datasets.ravdess import RAVDESS_EMOTIONS

log = logging.getLogger(__name__)

EMOTION_CODES: dict[str, int] = {name: code for code, name in RAVDESS_EMOTIONS.items()}

MANIFEST = "manifest.json"
_MANIFEST_VERSION = 2  # bump whenever the rendered content changes
# astronaut() rows/cols holding hair, face and neck; MTCNN's box is ~110 px tall at scale 1.
_FACE_ROWS = slice(10, 200)
_FACE_COLS = slice(145, 325)
_REF_HEIGHT = 240  # motion amplitudes below are in pixels of a 240-pixel-tall frame


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``seconds`` and ``fps`` set ``round(seconds * fps)`` frames per clip."""

    n_actors: int = 6
    emotions: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
    clips_per_emotion: int = 4  # 96 clips: enough training data for the demo to generalise
    seconds: float = 1.2
    fps: int = 25
    width: int = 320
    height: int = 240
    sample_rate: int = 48000
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "emotions", tuple(self.emotions))
        unknown = [e for e in self.emotions if e not in EMOTION_CODES]
        if unknown or not self.emotions or len(set(self.emotions)) != len(self.emotions):
            raise ValueError(
                f"emotions must be distinct RAVDESS names {sorted(EMOTION_CODES)}; got {self.emotions}"
            )
        if not 1 <= self.n_actors <= 99:
            raise ValueError(f"n_actors must be in 1..99 (two-digit actor ids); got {self.n_actors}")
        if not 1 <= self.clips_per_emotion <= 4:
            raise ValueError("clips_per_emotion must be in 1..4 (2 statements x 2 repetitions)")
        if self.seconds <= 0 or round(self.seconds * self.fps) < 1 or self.fps < 1:
            raise ValueError(
                f"seconds * fps must give at least one frame; got {self.seconds} s at {self.fps} fps"
            )
        if self.width % 2 or self.height % 2 or self.height < 64 or self.width < 64:
            raise ValueError(
                f"width and height must be even and >= 64 (yuv420p); got {self.width}x{self.height}"
            )
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz; got {self.sample_rate}")

    @property
    def n_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    def to_dict(self) -> dict:
        """JSON-ready form (tuples become lists), as stored in the manifest."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class ClipPlan:
    """One clip of the corpus: its relative path and what it shows."""

    relpath: str
    actor: int
    emotion: str
    index: int


def ravdess_name(actor: int, emotion: str, index: int) -> str:
    """``01-01-EE-01-SS-RR-AA.mp4``: AV speech, normal intensity; statement/repetition from ``index`` 0..3."""
    statement, repetition = index // 2 + 1, index % 2 + 1
    return f"01-01-{EMOTION_CODES[emotion]:02d}-01-{statement:02d}-{repetition:02d}-{actor:02d}.mp4"


def plan_corpus(spec: SyntheticSpec) -> list[ClipPlan]:
    """All clips of ``spec`` in a fixed order (actor, emotion, index)."""
    return [
        ClipPlan(f"Actor_{a:02d}/{ravdess_name(a, e, k)}", a, e, k)
        for a in range(1, spec.n_actors + 1)
        for e in spec.emotions
        for k in range(spec.clips_per_emotion)
    ]


# ----------------------------------------------------------------------------------------- video


@functools.cache
def _face_rgba() -> np.ndarray:
    """RGBA face patch, float32 [190, 180, 4] in [0, 1]; soft elliptical alpha (not premultiplied)."""
    from skimage.data import astronaut

    rgb = astronaut()[_FACE_ROWS, _FACE_COLS].astype(np.float32) / 255.0
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Ellipse around hair + face + neck; a soft edge keeps compositing free of hard seams.
    r = np.sqrt(((xx - w * 0.5) / (w * 0.47)) ** 2 + ((yy - h * 0.52) / (h * 0.50)) ** 2)
    alpha = np.clip((1.0 - r) / 0.08, 0.0, 1.0)[..., None]
    out = np.concatenate([rgb, alpha], axis=-1)
    out.setflags(write=False)
    return out


def _actor_rng(seed: int, actor: int) -> np.random.Generator:
    return np.random.default_rng([seed, actor, 7919])


@functools.lru_cache(maxsize=16)
def _background(actor: int, width: int, height: int, seed: int) -> np.ndarray:
    """Static per-actor background, uint8 [H, W, 3] (read-only): colour, gradient and stripes."""
    rng = _actor_rng(seed, actor)
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(18, 60)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    grad = (yy / height - 0.5) * rng.uniform(-0.3, 0.3)
    bg = base + 0.08 * stripes[..., None] * rng.uniform(0.3, 1.0, size=3) + grad[..., None]
    bg = bg + rng.normal(0, 0.015, size=bg.shape)
    out = np.clip(bg * 255 + 0.5, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def _actor_look(actor: int, seed: int) -> tuple[float, np.ndarray, float]:
    """Per-actor face scale (relative), RGB tint and horizontal offset (fraction of width)."""
    rng = _actor_rng(seed, actor + 1000)
    return (
        float(rng.uniform(0.90, 1.0)),
        rng.uniform(0.88, 1.08, size=3).astype(np.float32),
        float(rng.uniform(-0.06, 0.06)),
    )


Motion = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _wave(t: np.ndarray, hz: float, rng: np.random.Generator) -> np.ndarray:
    """sin(2 pi f t + phase) with a per-clip +-10 % frequency and a random phase."""
    return np.sin(2 * np.pi * hz * rng.uniform(0.9, 1.1) * t + rng.uniform(0, 2 * np.pi))


def _jitter(n: int, px: float, rng: np.random.Generator) -> np.ndarray:
    return np.convolve(rng.normal(0, px, n + 4), np.ones(5) / 5, mode="valid")[:n] * 2


# Each returns (dx px, dy px, zoom factor, rotation degrees) per frame, at a 240-pixel frame height.
_MOTIONS: dict[str, Motion] = {
    "neutral": lambda t, r: (_jitter(len(t), 0.4, r), _jitter(len(t), 0.4, r), 1 + 0 * t, 0 * t),
    "calm": lambda t, r: (3 * _wave(t, 0.4, r), _jitter(len(t), 0.3, r), 1 + 0 * t, 0 * t),
    "happy": lambda t, r: (_jitter(len(t), 0.5, r), 9 * _wave(t, 3.0, r), 1 + 0 * t, 0 * t),
    "sad": lambda t, r: (2 * _wave(t, 0.5, r), -8 + 14 * np.clip(t / 1.2, 0, 1), 1 + 0 * t, 0 * t),
    "angry": lambda t, r: (
        11 * _wave(t, 5.0, r),
        _jitter(len(t), 0.5, r),
        1 + 0.05 * _wave(t, 2.5, r),
        0 * t,
    ),
    "fearful": lambda t, r: (3 * _wave(t, 8.0, r), 3 * _wave(t, 7.0, r), 1 - 0.06 * np.clip(t, 0, 1), 0 * t),
    "disgust": lambda t, r: (4 * _wave(t, 1.2, r), 0 * t, 1 + 0 * t, 7 * _wave(t, 1.2, r)),
    "surprised": lambda t, r: (0 * t, -6 * np.clip(t / 0.3, 0, 1), 1 + 0.07 * np.clip(t / 0.3, 0, 1), 0 * t),
}


def render_frames(
    n_frames: int,
    fps: float,
    width: int = 320,
    height: int = 240,
    actor: int = 1,
    emotion: str = "neutral",
    index: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Render the face clip of ``(actor, emotion, index)``: uint8 [T, H, W, 3] RGB, T = ``n_frames``.

    The face (MTCNN box ~0.4 of the frame height) always stays fully inside the frame.
    """
    import cv2

    if emotion not in _MOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; choose one of {sorted(_MOTIONS)}")
    face = _face_rgba()
    ph, pw = face.shape[:2]
    rel_scale, tint, x_off = _actor_look(actor, seed)
    base = min(rel_scale * height / _REF_HEIGHT, 0.92 * height / ph, 0.92 * width / pw)
    # uint8 premultiplied colour and 3-channel alpha: compositing is then a few SIMD cv2 calls.
    fg_src = np.clip(face[..., :3] * tint * face[..., 3:] * 255 + 0.5, 0, 255).astype(np.uint8)
    a_src = np.repeat(np.clip(face[..., 3:] * 255 + 0.5, 0, 255).astype(np.uint8), 3, axis=-1)
    rng = np.random.default_rng([seed, actor, EMOTION_CODES[emotion], index])
    t = np.arange(n_frames, dtype=np.float64) / fps
    dx, dy, zoom, angle = (
        np.asarray(v, dtype=np.float64) * np.ones_like(t) for v in _MOTIONS[emotion](t, rng)
    )
    px = height / _REF_HEIGHT
    bg = _background(actor, width, height, seed)
    out = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    corners = np.array([[0, 0, 1], [pw, 0, 1], [0, ph, 1], [pw, ph, 1]], dtype=np.float64).T
    for i in range(n_frames):
        m = cv2.getRotationMatrix2D((pw / 2, ph / 2), float(angle[i]), base * float(zoom[i]))
        # Move the patch centre to the frame centre plus the motion, then pull it back inside.
        m[:, 2] += np.array([width * (0.5 + x_off) + dx[i] * px, height * 0.5 + dy[i] * px]) - m @ [
            pw / 2,
            ph / 2,
            1,
        ]
        box = m @ corners
        m[0, 2] -= min(box[0].min(), 0) + max(box[0].max() - width, 0)
        m[1, 2] -= min(box[1].min(), 0) + max(box[1].max() - height, 0)
        fg = cv2.warpAffine(fg_src, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        alpha = cv2.warpAffine(a_src, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        cv2.add(fg, cv2.multiply(bg, cv2.bitwise_not(alpha), scale=1 / 255), dst=out[i])
    return out


# ----------------------------------------------------------------------------------------- audio

# (fundamental Hz, amplitude-modulation Hz, peak amplitude) per emotion.
_VOICES: dict[str, tuple[float, float, float]] = {
    "neutral": (150.0, 2.0, 0.25),
    "calm": (130.0, 1.0, 0.2),
    "happy": (260.0, 6.0, 0.45),
    "sad": (110.0, 1.5, 0.15),
    "angry": (220.0, 9.0, 0.6),
    "fearful": (320.0, 11.0, 0.35),
    "disgust": (170.0, 3.0, 0.3),
    "surprised": (380.0, 4.0, 0.5),
}


def render_audio(
    seconds: float,
    sample_rate: int,
    actor: int = 1,
    emotion: str = "neutral",
    index: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """The clip's "voice": float32 [round(seconds * sample_rate)] mono in [-1, 1].

    A three-harmonic tone whose pitch, modulation rate and loudness depend on the emotion, shifted
    by a per-actor pitch factor, plus a little seeded noise.
    """
    if emotion not in _VOICES:
        raise ValueError(f"unknown emotion {emotion!r}; choose one of {sorted(_VOICES)}")
    f0, am_hz, peak = _VOICES[emotion]
    # speaker pitch varies less than the emotions differ, so the classes stay separable across actors
    f0 *= float(_actor_rng(seed, actor + 2000).uniform(0.95, 1.05))
    rng = np.random.default_rng([seed, actor, EMOTION_CODES[emotion], index, 1])
    t = np.arange(int(round(seconds * sample_rate)), dtype=np.float64) / sample_rate
    tone = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3))
    am = 0.6 + 0.4 * np.sin(2 * np.pi * am_hz * t + rng.uniform(0, 2 * np.pi))
    fade = np.clip(np.minimum(t, t[-1] - t) / 0.01, 0, 1) if len(t) else t
    sig = peak * tone / 1.84 * am * fade + rng.normal(0, 0.01, size=t.shape)
    return np.clip(sig, -1.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------- encoding


def write_av_clip(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None,
    sample_rate: int = 48000,
    faststart: bool = False,
    crf: int = 20,
) -> Path:
    """Encode an MP4: H.264 (libx264, yuv420p) video and, unless ``audio`` is None, AAC audio.

    ``frames``: uint8 [T, H, W, 3] RGB, H and W even. ``audio``: float32 [S] (mono) or [S, C] with
    C in {1, 2}, values in [-1, 1] (clipped), at ``sample_rate`` Hz. ``faststart`` puts the index
    (moov) before the data, as streaming-ready files do; a truncated faststart file stays openable.
    Not atomic: write to a temporary name and rename if readers may look meanwhile.
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: frames must be uint8 [T>0, H, W, 3]; got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"{path}: yuv420p needs even width and height; got {frames.shape[2]}x{frames.shape[1]}"
        )
    planar = None
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32)
        audio = audio[:, None] if audio.ndim == 1 else audio
        if audio.ndim != 2 or audio.shape[1] not in (1, 2) or len(audio) == 0:
            raise ValueError(f"{path}: audio must be float32 [S>0] or [S>0, 1|2]; got {audio.shape}")
        planar = np.ascontiguousarray(np.clip(audio, -1.0, 1.0).T)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        vstream = container.add_stream("libx264", rate=int(fps))
        vstream.width, vstream.height, vstream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vstream.options = {"preset": "veryfast", "crf": str(crf)}
        astream = None
        if planar is not None:
            layout = "mono" if planar.shape[0] == 1 else "stereo"
            astream = container.add_stream("aac", rate=int(sample_rate), layout=layout)
            astream.options = {"aac_coder": "fast"}  # the default two-loop search is 2x slower
        for i, rgb in enumerate(frames):
            vframe = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vframe.pts = i
            container.mux(vstream.encode(vframe))
        container.mux(vstream.encode(None))
        if astream is not None:
            # The encoder re-chunks one long frame into AAC's 1024-sample frames.
            aframe = av.AudioFrame.from_ndarray(planar, format="fltp", layout=astream.layout.name)
            aframe.sample_rate, aframe.pts = int(sample_rate), 0
            container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return Path(path)


# ---------------------------------------------------------------------------------------- corpus


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == _MANIFEST_VERSION else None


def render_clip(spec: SyntheticSpec, clip: ClipPlan) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, H, W, 3] and audio float32 [S] of one planned clip."""
    frames = render_frames(
        spec.n_frames, spec.fps, spec.width, spec.height, clip.actor, clip.emotion, clip.index, spec.seed
    )
    audio = render_audio(spec.seconds, spec.sample_rate, clip.actor, clip.emotion, clip.index, spec.seed)
    return frames, audio


def _remove_stale(root: Path, manifest: dict, wanted: set[str]) -> None:
    """Delete the clips an earlier spec generated and the new one does not.

    A manifest is data someone may hand you: an entry is deleted only if its path resolves to a file
    inside ``root`` and the file's sha256 is the one recorded (so aver wrote it). Anything else is
    left alone and logged.
    """
    base = root.resolve()
    for entry in manifest.get("files", []):
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or rel in wanted:
            continue
        path = (base / rel).resolve()
        if (base / rel).is_symlink() or not path.is_relative_to(base) or not path.is_file():
            log.warning("synthetic: manifest entry %r is not a file inside %s; not deleted", rel, base)
        elif sha256_file(path) != entry.get("sha256"):
            log.warning("synthetic: %s differs from what aver generated; not deleted", path)
        else:
            path.unlink()


def generate_corpus(root: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> list[Path]:
    """Write the corpus under ``root``; return the clip paths in plan order.

    Idempotent and resumable: ``root/manifest.json`` (written last) records the spec and each
    file's sha256. With the same spec, files whose hash matches are kept untouched and only missing
    or altered ones are (re)written; with another spec, files listed by the old manifest and absent
    from the new plan are removed (files the manifest does not list are never touched). Each clip
    is written to a temporary name and renamed, so readers never see half a file.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(spec)
    old = _read_manifest(root / MANIFEST)
    known: dict[str, str] = {}
    if old is not None and old.get("spec") == spec.to_dict():
        known = {f["path"]: f["sha256"] for f in old.get("files", [])}
    elif old is not None:
        _remove_stale(root, old, {c.relpath for c in plan})
    entries, written = [], 0
    for clip in plan:
        path = root / clip.relpath
        digest = known.get(clip.relpath)
        if digest is None or not path.is_file() or sha256_file(path) != digest:
            path.parent.mkdir(parents=True, exist_ok=True)
            frames, audio = render_clip(spec, clip)
            atomic_write(
                path, lambda tmp, f=frames, a=audio: write_av_clip(tmp, f, spec.fps, a, spec.sample_rate)
            )
            digest, written = sha256_file(path), written + 1
        entries.append({"path": clip.relpath, "sha256": digest, "actor": clip.actor, "emotion": clip.emotion})
    if written or len(known) != len(entries):
        manifest = {"version": _MANIFEST_VERSION, "spec": spec.to_dict(), "files": entries}
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    log.info("synthetic corpus at %s: %d clips, %d written", root, len(plan), written)
    return [root / c.relpath for c in plan]


def write_photo_clip(
    path: str | os.PathLike,
    seconds: float = 2.0,
    emotion: str = "happy",
    photo: str | os.PathLike | None = None,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
) -> Path:
    """A clip of another real face than the corpus's: ``photo`` (default: the Grace Hopper portrait
    that ships with matplotlib) drifting slowly across the frame, with the synthetic voice of
    ``emotion``. What ``make demo`` and the tests give ``aver predict`` as an unseen video."""
    from PIL import Image

    if photo is None:
        import matplotlib.cbook

        photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(photo).convert("RGB")
    scale = 0.9 * height / img.height
    face = np.asarray(img.resize((int(img.width * scale), int(img.height * scale)), Image.BILINEAR))
    n = max(int(round(seconds * fps)), 2)
    frames = np.full((n, height, width, 3), 96, dtype=np.uint8)
    y = (height - face.shape[0]) // 2
    span = max(width - face.shape[1], 0)
    for i in range(n):
        x = int(round(span * (0.35 + 0.3 * i / max(n - 1, 1))))
        frames[i, y : y + face.shape[0], x : x + face.shape[1]] = face[:, : width - x]
    return write_av_clip(path, frames, fps, render_audio(n / fps, 48000, emotion=emotion), 48000)
