"""Batched face-crop augmentation on the training device: uint8 crops in, normalised float frames out.

The cache stores face crops as uint8 ``[B, T, H, W, 3]``; end-to-end models want ImageNet-normalised
``[B, T, 3, S, S]``. Doing crop / flip / brightness per frame in Python on the CPU would starve a GPU,
so everything here is one ``grid_sample`` over the whole batch on the crops' device.

Training draws one random resized crop, one horizontal flip and one brightness factor per clip and
applies them to all its T frames (Mocanu 2023, section 4: "randomly cropping, flipping and brightness
adjusting the input frames"; the ranges are torchvision's RandomResizedCrop / ColorJitter conventions,
the paper gives none). Evaluation is a plain resize of the whole crop.

Resampling is bilinear at pixel centres (``F.interpolate(..., align_corners=False)`` exactly, when not
shrinking). When the output is smaller than the stored crop, each output pixel averages a q x q grid of
bilinear samples (q = ceil(stored side / size)): a box anti-alias filter, used in train and eval alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "video_batch"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _draw(
    b: int, h: int, w: int, opts: dict, generator: torch.Generator | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-clip crop box (pixels, continuous), flip flag and brightness factor."""
    gdev = generator.device if generator is not None else device
    u = torch.rand(b, 6, generator=generator, device=gdev).to(device)
    lo, hi = opts["scale"]
    area = (lo + (hi - lo) * u[:, 0]) * h * w
    rlo, rhi = math.log(opts["ratio"][0]), math.log(opts["ratio"][1])
    ratio = torch.exp(rlo + (rhi - rlo) * u[:, 1])
    # torchvision re-draws a box that does not fit; we clamp it to the frame instead (no loop).
    bw = torch.sqrt(area * ratio).clamp(max=w)
    bh = torch.sqrt(area / ratio).clamp(max=h)
    return {
        "x0": u[:, 2] * (w - bw),
        "y0": u[:, 3] * (h - bh),
        "bw": bw,
        "bh": bh,
        "flip": u[:, 4] < opts["flip_p"],
        "bright": 1.0 + opts["brightness"] * (2.0 * u[:, 5] - 1.0),
    }


def _full(b: int, h: int, w: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The identity 'augmentation': the whole frame, no flip, brightness 1."""
    zeros = torch.zeros(b, device=device)
    return {
        "x0": zeros,
        "y0": zeros,
        "bw": zeros + w,
        "bh": zeros + h,
        "flip": torch.zeros(b, dtype=torch.bool, device=device),
        "bright": zeros + 1.0,
    }


def _grid(p: dict[str, torch.Tensor], h: int, w: int, n: int) -> torch.Tensor:
    """[B, n, n, 2] grid_sample coordinates of an n x n sampling of each clip's box."""
    centres = (torch.arange(n, device=p["x0"].device, dtype=torch.float32) + 0.5) / n  # [n]
    gx = p["x0"][:, None] + centres[None, :] * p["bw"][:, None]  # pixel-edge coordinates
    gy = p["y0"][:, None] + centres[None, :] * p["bh"][:, None]
    gx = torch.where(p["flip"][:, None], gx.flip(1), gx)  # a mirrored box: exactly reversed columns
    gx, gy = 2.0 * gx / w - 1.0, 2.0 * gy / h - 1.0  # align_corners=False normalisation
    b = gx.shape[0]
    return torch.stack([gx[:, None, :].expand(b, n, n), gy[:, :, None].expand(b, n, n)], dim=-1)


def video_batch(
    crops: torch.Tensor,
    size: int,
    train: bool,
    generator: torch.Generator | None = None,
    *,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    brightness: float = 0.2,
) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float32 [B, T, 3, size, size], ImageNet-normalised, on crops' device.

    ``train``: per clip a random resized crop (area fraction ``scale``, aspect ``ratio``), a horizontal
    flip with probability ``flip_p`` and a brightness factor in [1 - brightness, 1 + brightness] (values
    clipped to [0, 1] as torchvision does), the same for all T frames. Otherwise a resize to size x size.
    ``generator`` (on any device) makes the draws reproducible.
    """
    if crops.dim() != 5 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be [B, T, H, W, 3], got {tuple(crops.shape)}")
    if crops.dtype != torch.uint8:
        raise TypeError(f"crops must be uint8 as stored in the cache, got {crops.dtype}")
    b, t, h, w, _ = crops.shape
    dev = crops.device
    if train:
        opts = {"scale": scale, "ratio": ratio, "flip_p": flip_p, "brightness": brightness}
        p = _draw(b, h, w, opts, generator, dev)
    else:
        p = _full(b, h, w, dev)
    q = max(1, math.ceil(max(h, w) / size))  # supersampling factor when shrinking
    # A clip's T frames are stacked as channels: one grid per clip serves all of them, no per-frame copy.
    frames = crops.permute(0, 1, 4, 2, 3).reshape(b, t * 3, h, w).float().div_(255.0)
    out = F.grid_sample(
        frames, _grid(p, h, w, size * q), mode="bilinear", padding_mode="border", align_corners=False
    )
    if q > 1:
        out = F.avg_pool2d(out, q)
    out = out * p["bright"][:, None, None, None]
    if train:
        out = out.clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 1, 3, 1, 1)
    return (out.view(b, t, 3, size, size) - mean) / std
