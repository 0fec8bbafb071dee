"""extract.synthetic: RAVDESS naming, idempotent generation, real detectable faces, learnable classes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from aver.extract.media import iter_video_frames, load_audio, probe_video
from aver.extract.synthetic import (
    MANIFEST,
    RAVDESS_EMOTIONS,
    SyntheticSpec,
    generate_corpus,
    plan_corpus,
    render_audio,
    render_frames,
    write_av_clip,
)

SMALL = SyntheticSpec(n_actors=2, emotions=("neutral", "happy", "angry"), clips_per_emotion=1, seconds=0.8)
RAVDESS = re.compile(r"Actor_(\d\d)/(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.mp4")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, generate_corpus(root, SMALL)


def _frames(path) -> np.ndarray:
    return np.concatenate([f for f, _ in iter_video_frames(path, 64)])


def _clip(paths, actor: int, emotion: str):
    code = {v: k for k, v in RAVDESS_EMOTIONS.items()}[emotion]
    return next(
        p for p in paths if p.name.startswith(f"01-01-{code:02d}-") and p.name.endswith(f"-{actor:02d}.mp4")
    )


def test_ravdess_codes():
    assert RAVDESS_EMOTIONS == {
        1: "neutral",
        2: "calm",
        3: "happy",
        4: "sad",
        5: "angry",
        6: "fearful",
        7: "disgust",
        8: "surprised",
    }


def test_spec_validation():
    with pytest.raises(ValueError, match="emotions"):
        SyntheticSpec(emotions=("neutral", "bored"))
    with pytest.raises(ValueError, match="even"):
        SyntheticSpec(width=321)
    with pytest.raises(ValueError, match="clips_per_emotion"):
        SyntheticSpec(clips_per_emotion=5)
    with pytest.raises(ValueError, match="n_actors"):
        SyntheticSpec(n_actors=0)


def test_names_parse_as_ravdess(corpus):
    root, paths = corpus
    assert len(paths) == 2 * 3 * 1
    seen = set()
    for p in paths:
        m = RAVDESS.fullmatch(p.relative_to(root).as_posix())
        assert m, p
        actor_dir, modality, vocal, emo, intensity, statement, rep, actor = (int(g) for g in m.groups())
        assert (modality, vocal, intensity) == (1, 1, 1) and actor == actor_dir
        assert statement in (1, 2) and rep in (1, 2)
        seen.add((actor, RAVDESS_EMOTIONS[emo]))
        assert p.is_file()
    assert seen == {(a, e) for a in (1, 2) for e in SMALL.emotions}
    # Four clips per emotion use every statement x repetition once: names never collide.
    four = plan_corpus(SyntheticSpec(n_actors=1, clips_per_emotion=4))
    assert len({c.relpath for c in four}) == len(four)


def test_clips_have_expected_frames_and_audio(corpus):
    _, paths = corpus
    info = probe_video(paths[0])
    assert (info.width, info.height, info.n_frames) == (SMALL.width, SMALL.height, SMALL.n_frames)
    assert info.fps == pytest.approx(SMALL.fps) and info.has_audio
    assert len(_frames(paths[0])) == SMALL.n_frames
    assert abs(len(load_audio(paths[0])) - SMALL.seconds * 16000) <= 1024 / 3 + 1


def test_generate_is_idempotent_and_resumable(tmp_path):
    spec = SyntheticSpec(n_actors=1, emotions=("sad", "happy"), clips_per_emotion=1, seconds=0.4)
    paths = generate_corpus(tmp_path, spec)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["spec"] == spec.to_dict()
    assert [f["path"] for f in manifest["files"]] == [p.relative_to(tmp_path).as_posix() for p in paths]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    stamps = {p: p.stat().st_mtime_ns for p in [*paths, tmp_path / MANIFEST]}

    assert generate_corpus(tmp_path, spec) == paths
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten

    paths[0].unlink()
    paths[1].write_bytes(b"damaged")
    generate_corpus(tmp_path, spec)
    assert paths[0].is_file() and len(_frames(paths[1])) == spec.n_frames
    assert not list(tmp_path.rglob("*.tmp*"))

    # Another spec removes the clips it no longer plans (and only those).
    (tmp_path / "Actor_01" / "user_note.txt").write_text("keep me")
    smaller = SyntheticSpec(n_actors=1, emotions=("happy",), clips_per_emotion=1, seconds=0.4)
    kept = generate_corpus(tmp_path, smaller)
    assert kept == [paths[1]] and not paths[0].exists()
    assert (tmp_path / "Actor_01" / "user_note.txt").exists()


def test_rendering_is_deterministic():
    a = render_frames(6, 25, actor=2, emotion="angry", index=1, seed=3)
    np.testing.assert_array_equal(a, render_frames(6, 25, actor=2, emotion="angry", index=1, seed=3))
    assert not np.array_equal(a, render_frames(6, 25, actor=2, emotion="angry", index=1, seed=4))
    s = render_audio(0.2, 16000, actor=2, emotion="angry", seed=3)
    np.testing.assert_array_equal(s, render_audio(0.2, 16000, actor=2, emotion="angry", seed=3))
    assert s.dtype == np.float32 and s.shape == (3200,) and np.abs(s).max() <= 1.0


@pytest.mark.slow
def test_mtcnn_finds_one_large_face(corpus):
    _, paths = corpus
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    frames = [f for p in paths for f in _frames(p)[::7]]
    boxes, probs = mtcnn.detect(frames)
    for box, prob in zip(boxes, probs, strict=True):
        assert prob is not None and len(prob) == 1 and prob[0] > 0.95
        x0, y0, x1, y1 = box[0]
        assert y1 - y0 >= 85  # MTCNN's box; the rendered head is taller still
        assert x0 >= 0 and y0 >= 0 and x1 <= SMALL.width and y1 <= SMALL.height


def _motion(frames: np.ndarray) -> tuple[float, float, float]:
    """Mean |frame difference| and mean |horizontal|, |vertical| Farneback flow."""
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    flows = np.stack(
        [
            cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            for a, b in zip(grey[:-1], grey[1:], strict=True)
        ]
    )
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()
    return float(diff), float(np.abs(flows[..., 0]).mean()), float(np.abs(flows[..., 1]).mean())


def test_emotions_move_differently(corpus):
    _, paths = corpus
    for actor in (1, 2):
        neutral, happy, angry = (
            _motion(_frames(_clip(paths, actor, e))) for e in ("neutral", "happy", "angry")
        )
        assert happy[0] > 3 * neutral[0] and angry[0] > 3 * neutral[0]
        assert happy[2] > 2 * happy[1]  # bobbing: vertical
        assert angry[1] > 2 * angry[2]  # shaking: horizontal


def test_emotions_sound_different_and_actors_look_different(corpus):
    _, paths = corpus

    def peak_hz(audio):
        return np.fft.rfftfreq(len(audio), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(audio)))]

    sounds = {e: load_audio(_clip(paths, 1, e)) for e in SMALL.emotions}
    peaks = {e: peak_hz(a) for e, a in sounds.items()}
    assert peaks["happy"] > 1.5 * peaks["neutral"] and peaks["angry"] > 1.3 * peaks["neutral"]
    assert np.sqrt(np.mean(sounds["angry"] ** 2)) > 1.5 * np.sqrt(np.mean(sounds["neutral"] ** 2))
    # Speaker effect: the two actors' backgrounds (frame corners) differ.
    c1, c2 = (_frames(_clip(paths, a, "neutral"))[0, :20, :20].astype(float).mean((0, 1)) for a in (1, 2))
    assert np.abs(c1 - c2).max() > 10


def test_write_av_clip_rejects_bad_input(tmp_path):
    ok = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="even"):
        write_av_clip(tmp_path / "a.mp4", np.zeros((2, 15, 16, 3), np.uint8), 25, None)
    with pytest.raises(ValueError, match="uint8"):
        write_av_clip(tmp_path / "a.mp4", ok.astype(np.float32), 25, None)
    with pytest.raises(ValueError, match="audio"):
        write_av_clip(tmp_path / "a.mp4", ok, 25, np.zeros((10, 3), np.float32))


def test_stereo_audio_round_trip(tmp_path):
    t = np.arange(24000) / 48000
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t), 0.4 * np.sin(2 * np.pi * 300 * t)], 1).astype(
        np.float32
    )
    path = write_av_clip(tmp_path / "s.mp4", render_frames(5, 25), 25, stereo, 48000)
    mono = load_audio(path)
    assert abs(len(mono) - 8000) <= 1024 / 3 + 1
    assert np.fft.rfftfreq(len(mono), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(mono)))] == pytest.approx(
        300, abs=3
    )


@pytest.mark.slow
def test_default_corpus(tmp_path):
    paths = generate_corpus(tmp_path)
    assert len(paths) == 6 * 4 * 4
    assert {p.parent.name for p in paths} == {f"Actor_{a:02d}" for a in range(1, 7)}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert len(manifest["files"]) == 96
    assert probe_video(paths[-1]).n_frames == 30


def test_a_handed_manifest_cannot_delete_files_aver_did_not_create(tmp_path):
    """Regression: entries such as ../x or absolute paths in manifest.json were deleted."""
    from aver.extract.synthetic import _MANIFEST_VERSION
    from aver.utils import sha256_file

    root, outside = tmp_path / "corpus", tmp_path / "precious.txt"
    root.mkdir()
    outside.write_text("keep me")
    (root / "notes.txt").write_text("mine, not aver's")
    spec = SyntheticSpec(n_actors=3, emotions=("neutral",), clips_per_emotion=1, seconds=0.2)
    other = SyntheticSpec(n_actors=3, emotions=("happy",), clips_per_emotion=1, seconds=0.2)
    files = [
        {"path": "../precious.txt", "sha256": sha256_file(outside)},
        {"path": str(outside), "sha256": sha256_file(outside)},
        {"path": "notes.txt", "sha256": "0" * 64},
    ]
    manifest = {"version": _MANIFEST_VERSION, "spec": other.to_dict(), "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest))
    generate_corpus(root, spec)
    assert outside.read_text() == "keep me" and (root / "notes.txt").exists()
