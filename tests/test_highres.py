"""High-resolution video in bounded memory (issue 18): frames are decoded one at a time, MTCNN sees a
copy no larger than ``face.detect_max_side``, crops keep only the face region; the numbers are those
of the batched functions, bit for bit (CPU, offline)."""

from __future__ import annotations

import contextlib
import tracemalloc
import types

import numpy as np
import pytest
import torch
from skimage.data import astronaut

from aver.extract import faces
from aver.extract.config import ExtractConfig, FaceConfig, RuntimeConfig
from aver.extract.faces import DetectionPass, FaceDetector, crop_faces, crop_stream

FPS = 6  # 1 s clips: 6 frames, enough for flow, quick to decode at 4K


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(FaceConfig(), device="cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The same 1 s face clip (the Grace Hopper portrait drifting across the frame) at 4K and 720p."""
    from aver.extract.synthetic import write_photo_clip

    d = tmp_path_factory.mktemp("highres")
    return {
        h: write_photo_clip(d / f"{h}p.mp4", seconds=1.0, width=w, height=h, fps=FPS)
        for w, h in ((3840, 2160), (1280, 720))
    }


def _prepare(path, detector: FaceDetector):
    from aver.extract.clip import prepare
    from aver.extract.datasets.base import ClipRecord
    from aver.store import Capacity

    cfg = ExtractConfig(dataset="highres", runtime=RuntimeConfig(device="cpu")).resolved()
    models = types.SimpleNamespace(detector=detector, lock=contextlib.nullcontext())
    return prepare(0, ClipRecord("c", str(path), "x"), cfg, models, Capacity(frames=64, audio=10**6))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return iw * ih / (area(a) + area(b) - iw * ih)


@pytest.mark.slow
def test_4k_clip_finds_the_720p_face_with_downscaled_detection_in_bounded_memory(
    clips, detector: FaceDetector, monkeypatch
) -> None:
    seen: list[tuple[int, ...]] = []
    real = detector._detect_face

    def spy(x, *args):
        seen.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(detector, "_detect_face", spy)
    tracemalloc.start()
    try:
        big = _prepare(clips[2160], detector)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # MTCNN got a copy whose longer side is detect_max_side (640 px), never the 3840 x 2160 frames.
    assert seen and all(s[1:] == (360, 640, 3) for s in seen), seen
    assert sum(s[0] for s in seen) == big.n_frames == FPS
    # Numpy buffers (tracemalloc sees numpy's allocations, not PyAV's frames nor torch's tensors):
    # one 4K frame is 25 MB, the clip 149 MB, a decode batch of 64 frames 1.6 GB; the passes keep
    # a chunk of face regions (at most CROP_CHUNK_BYTES as float, a quarter of it as uint8).
    bound = 3840 * 2160 * 3 + faces.CROP_CHUNK_BYTES // 4
    assert peak < bound, f"numpy peak {peak / 2**20:.0f} MiB while extracting a 4K clip"
    small = _prepare(clips[720], detector)
    assert big.mask.all() and small.mask.all()
    iou = _iou(big.boxes / 3.0, small.boxes)  # 3840 / 1280: the same face at both resolutions
    assert iou.min() > 0.9, iou
    assert big.crops.shape == small.crops.shape == (FPS, 3, 224, 224)


def test_detection_pass_equals_batched_detection(detector: FaceDetector) -> None:
    """Frame by frame (shrunk on arrival, batched at the same block/batch boundaries) gives the
    detections of ``FaceDetector.detect`` on whole batches, bit for bit; with a stride too."""
    img = np.zeros((720, 1024, 3), np.uint8)  # above detect_max_side: downscaled for MTCNN
    img[100:612, 300:812] = astronaut()
    frames = np.stack([np.roll(img, 4 * k, axis=1) for k in range(5)])
    for every, block, batch in ((1, 3, 2), (2, 4, 3)):
        run = DetectionPass(detector, every, batch, block, contextlib.nullcontext())
        for f in frames:
            run.add(f)
        got = run.finish()
        want = [np.zeros((0, 5), np.float32)] * len(frames)
        for a in range(0, len(frames), block):
            chosen = [k for k in range(a, min(a + block, len(frames))) if k % every == 0]
            for c in range(0, len(chosen), batch):
                picked = chosen[c : c + batch]
                for k, d in zip(picked, detector.detect(frames[picked]), strict=True):
                    want[k] = d
        assert len(got) == len(frames)
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_array_equal(g, w, err_msg=f"frame {k}, every {every}")
        assert all(len(got[k]) == 1 for k in range(0, len(frames), every))


@pytest.mark.parametrize("chunk_bytes", [faces.CROP_CHUNK_BYTES, 1])
def test_crop_stream_equals_crop_faces_per_block(monkeypatch, chunk_bytes: int) -> None:
    """Crops made as frames arrive (face region only, chunked) are ``crop_faces`` on blocks of
    frames, bit for bit: boxes inside the frame (a cut region) and one leaving it (whole frames)."""
    monkeypatch.setattr(faces, "CROP_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 240, 320, 3), dtype=np.uint8)
    boxes = np.array(
        [[40.3, 30.7, 190.2, 181.9], [41, 31, 191, 182], [60.5, 20.25, 150.5, 110.25]] * 2
        + [[-20.5, 100.0, 90.0, 210.5]],
        np.float32,
    )
    block = 3
    got = torch.cat(list(crop_stream(iter(frames), boxes, 48, block)))
    want = torch.cat(
        [crop_faces(frames[a : a + block], boxes[a : a + block], 48) for a in range(0, 7, block)]
    )
    assert torch.equal(got, want)
    # Frames beyond the boxes are never pulled from the decoder.
    source = iter(frames)
    assert sum(len(c) for c in crop_stream(source, boxes[:4], 48, block)) == 4
    assert len(list(source)) == 3


def test_iter_frames_gives_the_batched_frames_one_at_a_time(tmp_path) -> None:
    from aver.extract.media import iter_frames, iter_video_frames
    from aver.extract.synthetic import write_photo_clip

    path = write_photo_clip(tmp_path / "c.mp4", seconds=0.5, width=160, height=120, fps=10)
    one = list(iter_frames(path, max_seconds=0.35))
    frames, times = (
        np.concatenate(v) for v in zip(*iter_video_frames(path, 2, max_seconds=0.35), strict=True)
    )
    assert len(one) == len(frames) == 4
    for (rgb, t), f, s in zip(one, frames, times, strict=True):
        assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8 and t == s
        np.testing.assert_array_equal(rgb, f)
