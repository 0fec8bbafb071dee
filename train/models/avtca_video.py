"""AVT-CA's per-frame video encoders (Dhanith et al., Alg. 1-5 and the video half of Alg. 10).

``frame_encoder="alg10"`` (default) is Alg. 10's branch as listed::

    V_conv = convBlock(V)                                             Alg. 1 (video: conv, max pool)
    V_att  = channelAttention(V_conv) * spatialAttention(V_conv)      Alg. 2, 3
    V_LFR  = localFeatureExtractor(V_conv)                            Alg. 4
    V_iR   = invertedResidualBlock(invertedResidualBlock(V_att + V_LFR))   Alg. 5, twice
    -> one vector per frame (``frame_pool`` over H, W) -> the temporal conv blocks in ``avtca.py``

``frame_encoder="efficientface"`` is the full EfficientFace of MMER's code (IR stages of 4/8/4 units,
attention after stage 2, 1x1 conv to 1024 channels): what aver built before the Alg. 10 branch;
its parameter names are kept so that older checkpoints load.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from aver.train.models.avtca import AvtcaConfig

FRAME_ENCODERS = ("alg10", "efficientface")
# Alg. 1's video conv block: 3x3 conv and max pooling only ("conv"), or EfficientFace's conv-BN-ReLU stem
VIDEO_STEMS = ("conv", "conv_bn_relu")
FRAME_POOLS = ("mean", "max")  # map -> one vector per frame (EfficientFace / MMER: mean)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _depthwise(cin: int, cout: int, stride: int) -> nn.Conv2d:
    """3x3 grouped conv; ``groups = gcd`` generalises EfficientFace's ``groups=cin`` (cout a multiple)."""
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=math.gcd(cin, cout), bias=False)


def video_stem(kind: str, cout: int) -> nn.Sequential:
    """Alg. 1, video: 3x3 conv (stride 2) then max pooling (3, stride 2): ``[N, 3, S, S] -> [N, cout, S/4, S/4]``
    (56x56 at 224 px, the map Alg. 4 cuts into 28x28 quadrants). ``conv_bn_relu``: EfficientFace's
    stem, with BatchNorm and ReLU between the two (Alg. 1 gives those to the audio block only)."""
    conv = nn.Conv2d(3, cout, 3, 2, 1) if kind == "conv" else _conv_bn_relu(3, cout, 3, 2)
    return nn.Sequential(conv, nn.MaxPool2d(3, 2, 1))


class InvertedResidual(nn.Module):
    """Alg. 5 (ShuffleNet-v2 unit, EfficientFace's stages): two branches concatenated, then shuffled.

    Stride 2, as Alg. 5 lists it: branch 1 is depthwise -> BN -> 1x1 -> BN -> ReLU, branch 2 is
    1x1 block -> depthwise -> BN -> 1x1 block, both on the whole input. Stride 1 (ShuffleNet's basic
    unit, the text's "shortcut connections"): half of the channels pass through, branch 2 takes the
    other half, so the width is kept. The shuffle (2 groups) only permutes channels.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(cin, cin, stride), nn.BatchNorm2d(cin), _conv_bn_relu(cin, half, kernel=1)
            )
        self.branch2 = nn.Sequential(
            _conv_bn_relu(cin if stride > 1 else half, half, kernel=1),
            _depthwise(half, half, stride),
            nn.BatchNorm2d(half),
            _conv_bn_relu(half, half, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        n, c, h, w = out.shape  # channel shuffle, 2 groups
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def _stage(cin: int, cout: int, repeats: int) -> nn.Sequential:
    return nn.Sequential(
        InvertedResidual(cin, cout, 2), *(InvertedResidual(cout, cout, 1) for _ in range(repeats - 1))
    )


class ChannelAttention(nn.Module):
    """Alg. 2 (EfficientFace ``Channel``): global average pool -> FC-BN-ReLU bottleneck -> FC, per channel."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        mid = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.Linear(channels, mid), nn.BatchNorm1d(mid), nn.ReLU(inplace=True), nn.Linear(mid, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x.mean((2, 3)))[:, :, None, None]


class SpatialAttention(nn.Module):
    """Alg. 3 (EfficientFace ``Spatial``): 1x1 reduce, two dilated (4) 3x3 conv blocks, 1x1 to one map."""

    def __init__(self, channels: int, reduction: int, n_dilated: int = 2, dilation: int = 4) -> None:
        super().__init__()
        mid = max(1, channels // reduction)
        layers: list[nn.Module] = [nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
        for _ in range(n_dilated):
            layers += [
                nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(mid),
                nn.ReLU(True),
            ]
        self.gate = nn.Sequential(*layers, nn.Conv2d(mid, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x)


class Modulator(nn.Module):
    """Channel x spatial attention (Alg. 10 line 4; the text's "dot product multiplication" of the maps).

    ``gate="sigmoid"``: the maps gate the features, ``x * sigmoid(c * s)`` (EfficientFace);
    ``"product"``: Alg. 10 literally, the product ``c * s`` itself.
    """

    def __init__(self, channels: int, reduction: int, gate: str) -> None:
        super().__init__()
        self.channel, self.spatial, self.gate = (
            ChannelAttention(channels, reduction),
            SpatialAttention(channels, reduction),
            gate,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.channel(x) * self.spatial(x)  # [N, C, 1, 1] * [N, 1, H, W]
        return x * torch.sigmoid(att) if self.gate == "sigmoid" else att


class LocalFeatureExtractor(nn.Module):
    """Alg. 4: the map's four quadrants (28x28 of 56x56 at 224 px), each through its own two
    depthwise conv blocks (the first with ``stride``), reassembled into one map (halved at stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()

        def branch() -> nn.Sequential:
            return nn.Sequential(
                _depthwise(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(True),
                _depthwise(cout, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(True),
            )  # fmt: skip

        self.branches = nn.ModuleList(branch() for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2] // 2, x.shape[3] // 2
        p11, p12, p21, p22 = (
            b(x[:, :, i * h : (i + 1) * h, j * w : (j + 1) * w])
            for b, (i, j) in zip(self.branches, ((0, 0), (0, 1), (1, 0), (1, 1)), strict=True)
        )
        return torch.cat([torch.cat([p11, p12], dim=3), torch.cat([p21, p22], dim=3)], dim=2)


def _pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    return x.mean((2, 3)) if kind == "mean" else x.amax((2, 3))


class Alg10FrameEncoder(nn.Module):
    """Alg. 10's video branch, one frame ``[N, 3, S, S]`` -> one vector ``[N, ir_channels[-1]]``.

    ``V_att`` has the conv block's shape, so the local feature extractor keeps its width (Alg. 10's
    sum) and, at ``local_stride=1``, its resolution; at ``local_stride=2`` (EfficientFace's extractor)
    ``V_att`` is max-pooled 2x2 to the extractor's half-resolution map before the sum.
    """

    def __init__(self, cfg: AvtcaConfig) -> None:
        super().__init__()
        c0 = cfg.frame_channels[0]
        self.conv1 = video_stem(cfg.video_stem, c0)  # Alg. 10: V_conv = convBlock(V)
        self.modulator = Modulator(
            c0, cfg.attention_reduction, cfg.attention_gate
        )  # V_att = channel * spatial
        self.local = LocalFeatureExtractor(c0, c0, cfg.local_stride)  # V_LFR = localFeatureExtractor(V_conv)
        widths = (c0, *cfg.ir_channels)  # V_iR = IR(IR(V_att + V_LFR))
        self.blocks = nn.Sequential(
            *(
                InvertedResidual(i, o, s)
                for i, o, s in zip(widths[:-1], widths[1:], cfg.ir_strides, strict=True)
            )
        )
        self.local_stride, self.pool, self.out_dim = cfg.local_stride, cfg.frame_pool, cfg.ir_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [N, c0, S/4, S/4]
        att = self.modulator(x)
        if self.local_stride == 2:
            att = F.max_pool2d(att, 2)
        return _pool(self.blocks(att + self.local(x)), self.pool)


class EfficientFaceEncoder(nn.Module):
    """One frame ``[N, 3, S, S]`` -> one vector ``[N, C5]``: EfficientFace as MMER's video branch
    (conv block, IR stage 2, attention x stage 2 + local features, IR stages 3-4, 1x1 conv, pool)."""

    def __init__(self, cfg: AvtcaConfig) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = cfg.frame_channels
        r2, r3, r4 = cfg.stage_repeats
        self.conv1 = video_stem(cfg.video_stem, c0)
        self.stage2 = _stage(c0, c1, r2)
        self.modulator = Modulator(c1, cfg.attention_reduction, cfg.attention_gate)
        self.local = LocalFeatureExtractor(c0, c1, 2)
        self.stage3, self.stage4 = _stage(c1, c2, r3), _stage(c2, c3, r4)
        self.conv5 = _conv_bn_relu(c3, c4, kernel=1)
        self.pool, self.out_dim = cfg.frame_pool, c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # [N, c0, S/4, S/4]
        x = self.modulator(self.stage2(x)) + self.local(x)  # [N, c1, S/8, S/8]
        return _pool(self.conv5(self.stage4(self.stage3(x))), self.pool)


def frame_encoder(cfg: AvtcaConfig) -> nn.Module:
    """The per-frame encoder ``cfg.frame_encoder`` names; its ``out_dim`` is the vector's width."""
    return Alg10FrameEncoder(cfg) if cfg.frame_encoder == "alg10" else EfficientFaceEncoder(cfg)
