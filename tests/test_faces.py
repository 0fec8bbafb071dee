"""Face detection, tracking, smoothing and cropping (CPU, offline; MTCNN weights ship in its wheel)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.data import astronaut

from aver.errors import ClipError
from aver.extract.config import FaceConfig
from aver.extract.faces import FaceDetector, crop_faces, smooth_boxes, track_face

# Where MTCNN finds the astronaut's face in the 512x512 image (measured: about 180, 61, 268, 172).
ASTRONAUT_FACE = (180.0, 61.0, 268.0, 172.0)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(FaceConfig(min_face_size=40), device="cpu")


@pytest.fixture(scope="module")
def astro_dets(detector: FaceDetector) -> list[np.ndarray]:
    img = astronaut()
    noise = np.random.default_rng(0).integers(0, 256, img.shape, dtype=np.uint8)
    return detector.detect(np.stack([img, np.zeros_like(img), noise, img]))


def _near(box: np.ndarray, ref: tuple[float, ...], tol: float) -> bool:
    return bool(np.all(np.abs(np.asarray(box[:4]) - np.asarray(ref)) <= tol))


def test_detect_astronaut_mixed_batch(astro_dets: list[np.ndarray]) -> None:
    assert len(astro_dets) == 4
    assert [d.shape for d in astro_dets] == [(1, 5), (0, 5), (0, 5), (1, 5)]
    assert all(d.dtype == np.float32 for d in astro_dets)
    face = astro_dets[0][0]
    assert face[4] > 0.99
    assert _near(face, ASTRONAUT_FACE, 6.0), face
    np.testing.assert_allclose(astro_dets[3], astro_dets[0], atol=1e-3)


def test_detect_all_blank_and_too_small(detector: FaceDetector) -> None:
    blank = detector.detect(np.zeros((2, 96, 128, 3), dtype=np.uint8))
    assert [d.shape for d in blank] == [(0, 5), (0, 5)]
    # Shorter side under min_face_size: MTCNN's pyramid would be empty.
    tiny = detector.detect(np.full((3, 30, 200, 3), 128, dtype=np.uint8))
    assert [d.shape for d in tiny] == [(0, 5)] * 3
    assert detector.detect(np.zeros((0, 64, 64, 3), dtype=np.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((1, 64, 64, 3), dtype=np.float32))


def test_detect_min_prob_drops_everything() -> None:
    strict = FaceDetector(FaceConfig(min_face_size=40, min_prob=1.0), device="cpu")
    img = astronaut()[::2, ::2].copy()  # 256 px: one cheap call
    assert strict.detect(img[None])[0].shape == (0, 5)


def test_downscaled_detection_is_in_original_coordinates(detector: FaceDetector) -> None:
    # A non-square frame, so scaling back by the wrong side would show.
    canvas = np.zeros((576, 768, 3), dtype=np.uint8)
    canvas[64:576, 200:712] = astronaut()
    full = detector.detect(canvas[None])[0]
    assert full.shape == (1, 5)
    shifted = np.array(ASTRONAUT_FACE) + [200, 64, 200, 64]
    assert _near(full[0], tuple(shifted), 6.0), full
    small = FaceDetector(FaceConfig(min_face_size=20, detect_max_side=384), device="cpu")
    reduced = small.detect(torch.from_numpy(canvas)[None])[0]
    assert reduced.shape == (1, 5)

    # MTCNN's own answer moves a little with the pyramid level (measured: ~4% of the side at half
    # resolution), so compare centres and sizes within a few percent of the face side.
    def centre_size(b: np.ndarray) -> np.ndarray:
        return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]])

    ref, got = centre_size(full[0]), centre_size(reduced[0])
    side = ref[2]
    np.testing.assert_allclose(got[:2], ref[:2], atol=0.04 * side)
    np.testing.assert_allclose(got[2:], ref[2:], atol=0.06 * side)


def _box(x1: float, y1: float, x2: float, y2: float, p: float) -> list[float]:
    return [x1, y1, x2, y2, p]


def _synthetic_dets() -> list[np.ndarray]:
    """10 frames: main face moving 5 px/frame; a smaller second face; gaps at 0, 3, 4, 9."""
    second = _box(400, 50, 440, 100, 0.999)
    dets = []
    for t in range(10):
        rows = [second]  # listed first, so index order cannot explain the choice
        if t not in (0, 3, 4, 9):
            rows.append(_box(100 + 5 * t, 80, 200 + 5 * t, 200, 0.999 if t == 6 else 0.99))
        if t == 3:
            rows.append(_box(560, 380, 600, 430, 0.95))  # false positive far away
        if t == 4:
            rows.append(_box(200, 80, 300, 200, 0.97))  # neighbour overlapping with IoU < 0.2
        dets.append(np.array(rows, dtype=np.float32))
    return dets


def test_track_follows_main_face_and_interpolates_gaps() -> None:
    track = track_face(_synthetic_dets(), (480, 640), "clip.mp4")
    expected_mask = np.array([t not in (0, 3, 4, 9) for t in range(10)])
    np.testing.assert_array_equal(track.mask, expected_mask)
    assert track.boxes.dtype == np.float32 and track.boxes.shape == (10, 4)
    assert track.prob.dtype == np.float32 and track.mask.dtype == bool
    # The motion is linear, so interpolation recovers the true path exactly.
    truth = np.array([[100 + 5 * t, 80, 200 + 5 * t, 200] for t in range(10)], dtype=np.float32)
    np.testing.assert_allclose(track.boxes[1:9], truth[1:9], atol=1e-4)
    np.testing.assert_allclose(track.boxes[0], truth[1])  # held before the first detection
    np.testing.assert_allclose(track.boxes[9], truth[8])  # held after the last
    np.testing.assert_allclose(track.prob[[0, 3, 4, 9]], 0.0)
    assert track.prob[6] == pytest.approx(0.999) and track.prob[5] == pytest.approx(0.99)


def test_track_nonlinear_gap_values() -> None:
    dets = [np.zeros((0, 5), np.float32) for _ in range(5)]
    dets[0] = np.array([_box(10, 10, 110, 110, 0.99)], np.float32)
    dets[4] = np.array([_box(30, 18, 130, 122, 0.99)], np.float32)
    track = track_face(dets, (200, 200), "x.mp4")
    np.testing.assert_allclose(track.boxes[1], [15, 12, 115, 113])
    np.testing.assert_allclose(track.boxes[2], [20, 14, 120, 116])
    np.testing.assert_array_equal(track.mask, [True, False, False, False, True])


def test_track_without_detections_raises_clip_error() -> None:
    dets = [np.zeros((0, 5), np.float32) for _ in range(7)]
    dets[2] = np.array([_box(-90, -90, -10, -10, 0.99)], np.float32)  # entirely outside the frame
    with pytest.raises(ClipError) as info:
        track_face(dets, (120, 160), "data/a/b.mp4")
    assert info.value.path == "data/a/b.mp4"
    assert info.value.stage == "faces"
    assert "7 frames" in info.value.cause


def test_smooth_constant_box_gets_margin_and_square() -> None:
    boxes = np.tile(np.array([[100, 50, 180, 170]], np.float32), (7, 1))  # w 80, h 120
    out = smooth_boxes(boxes, window=5, margin=0.1, frame_hw=(240, 320))
    assert out.dtype == np.float32 and out.shape == (7, 4)
    # Centre (140, 110), side 120 * 1.2 = 144; not clipped to the frame.
    np.testing.assert_allclose(out, np.tile([[68, 38, 212, 182]], (7, 1)), atol=1e-4)


def test_smooth_reduces_jitter_without_phase_shift() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(60, dtype=np.float64)
    cx, cy, w, h = 200 + 2 * t, 150 + 0 * t, 80 + 0 * t, 100 + 0 * t
    clean = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    noisy = clean + rng.normal(0, 4, clean.shape)
    out = smooth_boxes(noisy, window=9, margin=0.0, frame_hw=(480, 640))
    side = out[:, 2] - out[:, 0]
    np.testing.assert_allclose(side, out[:, 3] - out[:, 1], atol=1e-3)

    def jitter(b: np.ndarray) -> float:
        return float(np.var(np.diff((b[:, 0] + b[:, 2]) / 2)))

    assert jitter(out) < 0.25 * jitter(noisy)
    # A linear ramp comes out unshifted away from the edges.
    ramp = smooth_boxes(clean, window=9, margin=0.0, frame_hw=(480, 640))
    np.testing.assert_allclose((ramp[4:-4, 0] + ramp[4:-4, 2]) / 2, cx[4:-4], atol=1e-3)


def test_smooth_short_clip_and_bad_window() -> None:
    boxes = np.array([[0, 0, 10, 20], [2, 0, 12, 20], [4, 0, 14, 20]], np.float32)
    out = smooth_boxes(boxes, window=9, margin=0.0, frame_hw=(100, 100))
    assert out.shape == (3, 4)
    with pytest.raises(ValueError, match="odd"):
        smooth_boxes(boxes, window=4, margin=0.0, frame_hw=(100, 100))
    with pytest.raises(ValueError, match="T>0"):
        smooth_boxes(np.zeros((0, 4)), window=3, margin=0.0, frame_hw=(100, 100))


def _gradient(h: int = 240, w: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([0.5 * x + 0.3 * y + 10, 0.2 * x + 0.6 * y, 250 - 0.4 * x - 0.2 * y], -1)
    return np.round(img).astype(np.uint8)


def test_crop_matches_numpy_crop_and_resize() -> None:
    img = _gradient()
    out = crop_faces(img[None], np.array([[40, 30, 200, 190]], np.float32), 64)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 64, 64)
    ref = cv2.resize(img[30:190, 40:200], (64, 64), interpolation=cv2.INTER_AREA)
    diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1, diff.max()


def test_crop_subpixel_box_matches_analytic_gradient() -> None:
    # Integer slopes keep the image exact in uint8, so only the output rounding (<= 0.5) remains and
    # a half-pixel misalignment (aligned=False) would be off by 1.5.
    h, w = 60, 80
    img = np.fromfunction(lambda y, x, c: 2 * x + y + 10, (h, w, 3)).astype(np.uint8)
    x1, y1, side, size = 10.5, 5.25, 32.0, 16
    out = crop_faces(torch.from_numpy(img)[None], torch.tensor([[x1, y1, x1 + side, y1 + side]]), size)
    centres = (np.arange(size) + 0.5) * side / size - 0.5  # pixel i is centred at i + 0.5
    expected = 2 * (x1 + centres)[None, :] + (y1 + centres)[:, None] + 10
    assert np.abs(out[0, 0].numpy() - expected).max() <= 0.5 + 1e-3


def test_crop_downscale_is_area_averaged() -> None:
    # A 1-pixel checkerboard shrunk 3x: point sampling would give 0/255 stripes (aliasing).
    board = ((np.indices((96, 96)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(board[:, :, None], 3, axis=2)
    out = crop_faces(img[None], np.array([[0, 0, 96, 96]], np.float32), 32)
    ref = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).max() <= 1


def test_crop_batch_uses_each_frames_own_box_and_pads_black() -> None:
    frames = np.stack([np.full((200, 200, 3), v, np.uint8) for v in (50, 255)])
    boxes = np.array([[20, 20, 120, 120], [-50, -50, 150, 150]], np.float32)
    out = crop_faces(frames, boxes, 100)
    assert out.shape == (2, 3, 100, 100)
    assert torch.all(out[0] == 50)
    # Frame 1: output pixel i covers source [-50 + 2i, -48 + 2i); i <= 23 lies fully outside.
    assert torch.all(out[1, :, :24, :] == 0) and torch.all(out[1, :, :, :24] == 0)
    assert torch.all(out[1, :, 26:, 26:] == 255)
    assert crop_faces(frames[:0], boxes[:0], 32).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="one box per frame"):
        crop_faces(frames, boxes[:1], 32)


def test_astronaut_crop_still_contains_a_face(detector: FaceDetector, astro_dets: list[np.ndarray]) -> None:
    img = astronaut()
    track = track_face(astro_dets[:1], img.shape[:2], "astronaut")
    square = smooth_boxes(track.boxes, window=9, margin=0.15, frame_hw=img.shape[:2])
    crop = crop_faces(img[None], square, 160)
    again = detector.detect(crop.permute(0, 2, 3, 1).numpy())[0]
    assert again.shape[0] == 1 and again[0, 4] > 0.99
    # The face fills the square crop: side / (1 + 2 * margin) of 160 px, about 123 px.
    assert 90 < again[0, 2] - again[0, 0] < 150


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x2, y2 = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_detection_stride_and_downscale_keep_the_track(tmp_path, detector: FaceDetector) -> None:
    """face.detect_every=3 runs MTCNN on every third frame (the clip's index, across decode
    batches) and interpolates the rest; a coarser detect_max_side as well. On a real-photo clip the
    smoothed boxes stay within IoU 0.9 of every-frame detection (bench/extract.py --detect measures
    the cost on the whole corpus)."""
    import contextlib

    from aver.extract.datasets import DatasetOptions, load_dataset
    from aver.extract.faces import detect_frames
    from aver.extract.media import iter_video_frames

    opts = {
        "n_actors": 3,
        "emotions": ["happy"],
        "clips_per_emotion": 1,
        "seconds": 1.2,
        "width": 640,
        "height": 480,
    }
    clip = load_dataset("synthetic", DatasetOptions(data=tmp_path, options=opts)).clips[0].video
    frames = np.concatenate([f for f, _ in iter_video_frames(clip, 64)])
    hw = frames.shape[1:3]

    def boxes(det, every, first_batch=None):
        first_batch = first_batch or len(frames)
        dets = []
        for a in range(0, len(frames), first_batch):  # decode batches do not shift the stride
            dets += detect_frames(det, frames[a : a + first_batch], a, every, 8, contextlib.nullcontext())
        track = track_face(dets, hw, clip)
        return smooth_boxes(track.boxes, 9, 0.15, hw), track.mask

    full, mask = boxes(detector, 1)
    strided, smask = boxes(detector, 3, first_batch=10)
    assert mask.all() and smask.tolist() == [t % 3 == 0 for t in range(len(frames))]
    assert _iou(full, strided).min() > 0.9
    small = FaceDetector(FaceConfig(detect_max_side=320, min_face_size=20))
    coarse, _ = boxes(small, 1)
    assert _iou(full, coarse).min() > 0.9


def test_crop_of_the_face_region_equals_the_full_frame_crop() -> None:
    """crop_faces converts only the boxes' region; the crops match roi_align on whole frames
    (within one grey level: the sample coordinates are rounded differently after the shift)."""
    from torchvision.ops import roi_align

    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (6, 240, 320, 3), dtype=np.uint8))
    boxes = np.array(
        [[40.3, 30.7, 190.2, 181.9], [41, 31, 191, 182], [60.5, 20.25, 150.5, 110.25]] * 2, np.float32
    )
    got = crop_faces(frames, boxes, 64)
    idx = torch.arange(6, dtype=torch.float32)[:, None]
    full = roi_align(
        frames.permute(0, 3, 1, 2).float(),
        torch.cat([idx, torch.from_numpy(boxes)], 1),
        output_size=(64, 64),
        sampling_ratio=-1,
        aligned=True,
    )
    full = full.round().clamp(0, 255).to(torch.uint8)
    diff = (got.int() - full.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
