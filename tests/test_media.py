"""extract.media: probing, streaming frame decode, audio decode/resample, and every bad input."""

from __future__ import annotations

import logging
import wave

import numpy as np
import pytest
from media_fixtures import (
    write_no_face_clip,
    write_not_video,
    write_short_audio_clip,
    write_single_frame_clip,
    write_truncated,
    write_video_without_audio,
    write_zero_byte,
)

from aver.errors import ClipError
from aver.extract.media import iter_video_frames, load_audio, probe_video
from aver.extract.synthetic import render_frames, write_av_clip

FPS, SECONDS, SR = 25, 0.8, 48000
N = int(SECONDS * FPS)
TONE_HZ = 440.0
# AAC decodes up to one codec frame (1024 samples at the source rate) beyond the encoded audio.
AAC_SLACK_S = 1024 / SR


def _tone(seconds: float, sr: int, hz: float = TONE_HZ) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A face clip with a 440 Hz tone, written twice: index at the end (default) and faststart."""
    d = tmp_path_factory.mktemp("media")
    frames = render_frames(N, FPS, 320, 240, actor=2, emotion="happy")
    plain = write_av_clip(d / "01-01-03-01-01-01-02.mp4", frames, FPS, _tone(SECONDS, SR), SR)
    fast = write_av_clip(d / "01-01-03-01-01-02-02.mp4", frames, FPS, _tone(SECONDS, SR), SR, faststart=True)
    return {"dir": d, "frames": frames, "plain": plain, "fast": fast}


def _decode_all(path, batch_size, **kw):
    batches = list(iter_video_frames(path, batch_size, **kw))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), batches


def test_probe_reads_header(clips):
    info = probe_video(clips["plain"])
    assert (info.width, info.height) == (320, 240)
    assert info.fps == pytest.approx(FPS)
    assert info.n_frames == N
    assert info.duration_s == pytest.approx(SECONDS, abs=1.0 / FPS)
    assert info.has_audio
    assert info.audio_duration_s == pytest.approx(SECONDS, abs=AAC_SLACK_S)
    assert info.path == str(clips["plain"])


def test_frames_shapes_timestamps_and_content(clips):
    frames, ts, batches = _decode_all(clips["plain"], batch_size=8)
    assert [len(b[0]) for b in batches] == [8, 8, 4]
    assert frames.dtype == np.uint8 and frames.shape == (N, 240, 320, 3)
    assert ts.dtype == np.float64 and ts.shape == (N,)
    assert ts[0] == pytest.approx(0.0) and np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(np.diff(ts), 1.0 / FPS, atol=1e-3)
    # RGB order and pixel values survive the H.264 round trip (a BGR mix-up gives errors ~50).
    err = np.abs(frames.astype(np.float32) - clips["frames"].astype(np.float32)).mean()
    assert err < 4.0, err
    swapped = np.abs(frames[..., ::-1].astype(np.float32) - clips["frames"].astype(np.float32)).mean()
    assert swapped > 4 * err


def test_two_iterations_and_batch_sizes_give_identical_frames(clips):
    ref, ref_ts, _ = _decode_all(clips["plain"], batch_size=N)
    for bs in (1, 7, N + 5):
        frames, ts, _ = _decode_all(clips["plain"], batch_size=bs)
        np.testing.assert_array_equal(frames, ref)
        np.testing.assert_array_equal(ts, ref_ts)
    # Batches handed out earlier are not overwritten by later ones.
    batches = list(iter_video_frames(clips["plain"], 4))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), ref)


def test_max_seconds_stops_early(clips):
    frames, ts, _ = _decode_all(clips["plain"], batch_size=4, max_seconds=0.3)
    assert len(frames) == 8  # t = 0.00 .. 0.28
    assert ts[-1] < 0.3


def test_bad_arguments_raise_value_error(clips):
    with pytest.raises(ValueError):
        next(iter_video_frames(clips["plain"], 0))
    with pytest.raises(ValueError):
        load_audio(clips["plain"], max_seconds=0)


def _peak_hz(audio: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1.0 / sr)[np.argmax(spec)])


def test_audio_from_mp4_resampled_to_16k_mono(clips):
    audio = load_audio(clips["plain"], sample_rate=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Length: the encoded 0.8 s, give or take one AAC frame of padding.
    assert abs(len(audio) - SECONDS * 16000) <= AAC_SLACK_S * 16000 + 1, len(audio)
    assert np.abs(audio).max() <= 1.0
    assert _peak_hz(audio, 16000) == pytest.approx(TONE_HZ, abs=3.0)
    assert np.sqrt(np.mean(audio[2000:10000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    native = load_audio(clips["plain"], sample_rate=SR)
    assert abs(len(native) - 3 * len(audio)) <= 6
    assert len(load_audio(clips["plain"], 16000, max_seconds=0.25)) == 4000


def _write_wav(path, audio: np.ndarray, sr: int, channels: int = 1):
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    if channels == 2:
        pcm = np.stack([pcm, pcm], axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def test_audio_from_wav_exact_and_resampled(tmp_path):
    tone16 = _tone(1.0, 16000)
    same = load_audio(_write_wav(tmp_path / "1001_DFA_ANG_XX.wav", tone16, 16000), 16000)
    assert len(same) == 16000
    np.testing.assert_allclose(same, tone16, atol=1e-3)
    stereo48 = load_audio(_write_wav(tmp_path / "s48.wav", _tone(1.0, 48000), 48000, channels=2), 16000)
    assert abs(len(stereo48) - 16000) <= 2
    assert _peak_hz(stereo48, 16000) == pytest.approx(TONE_HZ, abs=2.0)


def test_wav_is_not_a_video(tmp_path):
    path = _write_wav(tmp_path / "a.wav", _tone(0.5, 16000), 16000)
    with pytest.raises(ClipError, match="has no video stream") as e:
        probe_video(path)
    assert e.value.path == str(path) and e.value.stage == "decode"


@pytest.mark.parametrize(
    "make, cause",
    [
        (lambda d: d / "01-01-01-01-01-01-01.mp4", "file not found"),
        (lambda d: write_zero_byte(d, "01-01-01-01-01-01-02.mp4"), r"file is empty \(0 bytes\)"),
        (lambda d: write_not_video(d, "01-01-01-01-01-01-03.mp4"), "not a readable video container"),
    ],
)
def test_unreadable_inputs_raise_clip_error(tmp_path, make, cause):
    path = make(tmp_path)
    for call in (probe_video, lambda p: next(iter_video_frames(p, 4))):
        with pytest.raises(ClipError, match=cause) as e:
            call(path)
        assert e.value.path == str(path) and e.value.stage == "decode"
        assert str(path) in str(e.value)
    with pytest.raises(ClipError) as e:
        load_audio(path)
    assert e.value.stage == "audio" and e.value.path == str(path)


def test_video_without_audio(tmp_path):
    path = write_video_without_audio(tmp_path, "01-01-01-01-01-01-04.mp4", seconds=0.4)
    info = probe_video(path)
    assert not info.has_audio and info.audio_duration_s == 0.0 and info.n_frames == 10
    with pytest.raises(ClipError, match="has no audio track") as e:
        load_audio(path)
    assert e.value.stage == "audio" and e.value.path == str(path)


def test_truncated_without_index_is_unreadable(clips, tmp_path):
    # moov sits at the end of a plain MP4: cutting it off leaves no readable container.
    path = write_truncated(tmp_path, "01-01-03-01-01-01-05.mp4", clips["plain"])
    with pytest.raises(ClipError, match="not a readable video container"):
        probe_video(path)
    with pytest.raises(ClipError, match="not a readable video container"):
        next(iter_video_frames(path, 4))


def test_truncated_faststart_fails_when_most_frames_are_lost(clips, tmp_path):
    path = write_truncated(tmp_path, "01-01-03-01-01-02-05.mp4", clips["fast"], fraction=0.4)
    assert probe_video(path).n_frames == N  # the header still announces every frame
    got = []
    with pytest.raises(ClipError, match=rf"after \d+ of {N} announced frames") as e:
        for frames, _ in iter_video_frames(path, 4):
            got.append(len(frames))
    assert e.value.stage == "decode" and e.value.path == str(path)
    assert sum(got) < N / 2


def test_truncated_faststart_keeps_frames_when_little_is_lost(clips, tmp_path, caplog):
    path = write_truncated(tmp_path, "01-01-03-01-01-02-06.mp4", clips["fast"], fraction=0.93)
    with caplog.at_level(logging.WARNING, logger="aver.extract.media"):
        frames, ts, _ = _decode_all(path, batch_size=4)
    assert N / 2 <= len(frames) < N
    assert any(str(path) in r.getMessage() for r in caplog.records)
    # Lost frames leave gaps in the timestamps; the frames that survived are intact.
    full, full_ts, _ = _decode_all(clips["fast"], N)
    idx = np.searchsorted(full_ts, ts)
    np.testing.assert_array_equal(full_ts[idx], ts)
    np.testing.assert_array_equal(frames, full[idx])
    # The kept file says so in a note that extraction records in clips/note.
    notes: list[str] = []
    kept = sum(len(f) for f, _ in iter_video_frames(path, 4, notes=notes))
    assert kept == len(frames) and len(notes) == 1 and f"of {N} announced frames" in notes[0], notes
    # With a stricter policy the same file is a failure.
    with pytest.raises(ClipError, match=rf"after {len(frames)} of {N} announced frames"):
        _decode_all(path, batch_size=4, min_decoded_ratio=1.0)


def test_single_frame_no_face_and_short_audio_clips_decode(tmp_path):
    one = write_single_frame_clip(tmp_path, "01-01-01-01-01-01-07.mp4")
    frames, ts, _ = _decode_all(one, 4)
    assert frames.shape == (1, 240, 320, 3) and ts.tolist() == [0.0]
    assert 0 < len(load_audio(one)) <= 16000 / 25 + AAC_SLACK_S * 16000 + 1

    noface = write_no_face_clip(tmp_path, "01-01-01-01-01-01-08.mp4", seconds=0.4)
    frames, _, _ = _decode_all(noface, 4)
    assert len(frames) == 10 and np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 5

    short = write_short_audio_clip(tmp_path, "01-01-01-01-01-01-09.mp4")
    info = probe_video(short)
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.audio_duration_s == pytest.approx(0.3, abs=AAC_SLACK_S)
    assert abs(len(load_audio(short)) - 0.3 * 16000) <= AAC_SLACK_S * 16000 + 1


def test_flv_container_without_frame_count(tmp_path):
    # CREMA-D ships FLV (Sorenson/FLV1) video, whose header carries no frame count.
    import av

    frames = render_frames(10, FPS, 480, 360)
    path = tmp_path / "1001_DFA_ANG_XX.flv"
    with av.open(str(path), "w", format="flv") as c:
        s = c.add_stream("flv", rate=FPS)
        s.width, s.height, s.pix_fmt = 480, 360, "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    info = probe_video(path)
    assert (info.width, info.height, info.n_frames, info.has_audio) == (480, 360, 10, False)
    decoded, ts, _ = _decode_all(path, 4)
    assert decoded.shape == (10, 360, 480, 3)
    np.testing.assert_allclose(ts, np.arange(10) / FPS, atol=1e-3)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_phone_video_decodes_upright(tmp_path, rotation):
    """Regression: a phone video with a rotation tag decoded sideways and MTCNN found no face."""
    import av

    from aver.extract.synthetic import render_frames

    upright = render_frames(6, 25, 320, 240, actor=1, emotion="happy")
    # stored as a phone stores it: the upright picture turned against the display rotation
    stored = np.ascontiguousarray(np.rot90(upright, k=-(rotation // 90) % 4, axes=(1, 2)))
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = stored.shape[2], stored.shape[1], "yuv420p"
        s.set_display_rotation(rotation)
        for i, f in enumerate(stored):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    frames = np.concatenate([f for f, _ in iter_video_frames(path, 4)])
    assert frames.shape == upright.shape
    assert np.abs(frames.astype(int) - upright.astype(int)).mean() < 6  # codec error only


def test_joined_mpegts_files_keep_a_forward_timeline_and_say_so(tmp_path):
    """Issue 18: two MPEG-TS files joined end to end restart their timestamps; the clip's times go
    on from the first part and a note says so (a cut note then gives the true duration)."""
    import av

    from aver.extract.media import iter_video_frames
    from aver.extract.synthetic import write_photo_clip

    clip = write_photo_clip(tmp_path / "a.mp4", seconds=1.0, fps=10)
    part = tmp_path / "part.ts"
    with av.open(str(clip)) as src, av.open(str(part), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for frame in src.decode(video=0):
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part.read_bytes() * 2)  # `cat part.ts part.ts > joined.ts`
    notes: list[str] = []
    times = np.concatenate([t for _, t in iter_video_frames(joined, 8, notes=notes)])
    assert len(times) >= 18 and np.all(np.diff(times) > 0), times
    assert times[-1] > 1.7  # two seconds of video, not the second part's own clock
    assert any("timestamps restart" in n for n in notes), notes
