"""aver.train.augment.video_batch: resize references, exact flips, shared per-clip draws, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aver.train.augment import IMAGENET_MEAN, IMAGENET_STD, video_batch

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
NO_AUG = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_p": 0.0, "brightness": 0.0}


def _smooth(b: int, t: int, h: int, w: int) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] smooth colour gradients (a 'known image')."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    img = torch.stack(
        [x * 0.9 + 0.05, y * 0.8 + 0.1, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(4 * y)], dim=-1
    )
    return (img * 255).round().to(torch.uint8).expand(b, t, h, w, 3).contiguous()


def _unnorm(out: torch.Tensor) -> torch.Tensor:
    return out * STD + MEAN


def _ref(crops: torch.Tensor, size: int, **kw) -> torch.Tensor:
    b, t, h, w, _ = crops.shape
    x = crops.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float() / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, **kw).view(
        b, t, 3, size, size
    )


def test_eval_same_size_is_the_normalised_input():
    crops = _smooth(2, 3, 24, 24)
    out = video_batch(crops, 24, train=False)
    assert out.shape == (2, 3, 3, 24, 24) and out.dtype == torch.float32
    torch.testing.assert_close(_unnorm(out), crops.permute(0, 1, 4, 2, 3).float() / 255, atol=1e-6, rtol=0)


def test_eval_upsampling_equals_bilinear_interpolate():
    crops = _smooth(1, 2, 20, 20)
    torch.testing.assert_close(
        _unnorm(video_batch(crops, 32, train=False)), _ref(crops, 32), atol=1e-5, rtol=0
    )


def test_eval_downsampling_is_antialiased():
    crops = _smooth(1, 1, 64, 64)
    out = _unnorm(video_batch(crops, 32, train=False))
    x = crops.permute(0, 1, 4, 2, 3)[0].float() / 255
    torch.testing.assert_close(out[0], F.avg_pool2d(x, 2), atol=1e-5, rtol=0)  # integer factor: box filter
    # against torch's antialiased bilinear resize (triangle filter): close on a smooth image
    assert (out - _ref(crops, 32, antialias=True)).abs().max() < 0.01
    # a non-integer factor stays close to the antialiased reference too
    assert (_unnorm(video_batch(crops, 28, train=False)) - _ref(crops, 28, antialias=True)).abs().max() < 0.02


@pytest.mark.parametrize("size", [32, 16])  # 32: one sample per pixel; 16: 2 x 2 supersampling
def test_forced_flip_is_an_exact_mirror(size):
    crops = torch.randint(0, 256, (3, 2, 30, 30, 3), dtype=torch.uint8)
    a = video_batch(crops, size, True, torch.Generator().manual_seed(5), flip_p=0.0)
    b = video_batch(crops, size, True, torch.Generator().manual_seed(5), flip_p=1.0)
    if size == 32:
        assert torch.equal(a, b.flip(-1))  # the same sampling points, columns reversed
    else:  # the 2 x 2 averages add the same four values in mirrored order: equal up to rounding
        torch.testing.assert_close(a, b.flip(-1), atol=1e-6, rtol=0)
    assert not torch.allclose(a, b, atol=1e-3)


def test_same_seed_same_output_other_seed_differs():
    crops = torch.randint(0, 256, (4, 2, 24, 24, 3), dtype=torch.uint8)
    a = video_batch(crops, 20, True, torch.Generator().manual_seed(1))
    b = video_batch(crops, 20, True, torch.Generator().manual_seed(1))
    c = video_batch(crops, 20, True, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_draw_per_clip_shared_by_its_frames():
    crops = _smooth(4, 5, 32, 32)  # identical frames and identical clips
    out = video_batch(crops, 24, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :1].expand_as(out))  # all T frames got the same crop / flip / brightness
    assert not torch.equal(out[0], out[1])  # clips got different draws


def test_crop_scale_and_position_on_a_ramp():
    # Red channel = column index: bilinear sampling of a ramp is exact, so the output reveals the box.
    w = 40
    ramp = torch.arange(w, dtype=torch.uint8)[None, :].expand(w, w)
    crops = torch.stack([ramp, ramp, ramp], dim=-1)[None, None].contiguous()
    opts = dict(NO_AUG, scale=(0.25, 0.25))  # a square box of half the side
    red = _unnorm(video_batch(crops, 10, True, torch.Generator().manual_seed(3), **opts))[0, 0, 0] * 255
    step = red[:, 1:] - red[:, :-1]
    torch.testing.assert_close(step, torch.full_like(step, 20 / 10), atol=1e-3, rtol=0)  # 20 px over 10 px
    assert 0 <= float(red[0, 0]) - 0.5 and float(red[0, -1]) <= w - 1  # inside the frame
    torch.testing.assert_close(red, red[:1].expand_as(red))  # rows equal: no flip, no shear


def test_full_box_without_jitter_equals_eval():
    crops = _smooth(2, 2, 36, 36)
    a = video_batch(crops, 18, True, torch.Generator().manual_seed(0), **NO_AUG)
    torch.testing.assert_close(a, video_batch(crops, 18, False), atol=1e-6, rtol=0)


def test_brightness_factor_range_and_clipping():
    crops = torch.full((64, 1, 8, 8, 3), 128, dtype=torch.uint8)
    out = _unnorm(
        video_batch(crops, 8, True, torch.Generator().manual_seed(0), **dict(NO_AUG, brightness=0.2))
    )
    factor = out[:, 0, 0, 0, 0] / (128 / 255)
    assert 0.8 - 1e-5 <= factor.min() < 0.85 and 1.15 < factor.max() <= 1.2 + 1e-5
    white = torch.full((8, 1, 8, 8, 3), 255, dtype=torch.uint8)
    bright = _unnorm(
        video_batch(white, 8, True, torch.Generator().manual_seed(0), **dict(NO_AUG, brightness=0.5))
    )
    assert bright.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("t", [1, 4])
def test_output_stats_are_sane(t):
    g = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (3, t, 40, 48, 3), dtype=torch.uint8, generator=g)
    for train in (True, False):
        out = video_batch(crops, 32, train, torch.Generator().manual_seed(1))
        assert out.shape == (3, t, 3, 32, 32) and torch.isfinite(out).all()
        lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
        assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
        # uniform noise in [0, 1] averages to 0.5 per channel whatever the crop
        torch.testing.assert_close(
            _unnorm(out).mean(dim=(0, 1, 3, 4)), torch.full((3,), 0.5), atol=0.03, rtol=0
        )


def test_rejects_wrong_layout_or_dtype():
    with pytest.raises(ValueError):
        video_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 8, False)
    with pytest.raises(TypeError):
        video_batch(torch.zeros(1, 1, 8, 8, 3), 8, False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_a_cpu_generator():
    crops = torch.randint(0, 256, (2, 3, 40, 40, 3), dtype=torch.uint8)
    cpu = video_batch(crops, 32, True, torch.Generator().manual_seed(4))
    gpu = video_batch(crops.cuda(), 32, True, torch.Generator().manual_seed(4))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
