"""Convolutional backbones for end-to-end models, and loaders for their published weight files.

Two families, both written in plain torch (the trainer does not depend on torchvision):

* ``resnet3d``: the 3D ResNets of Hara et al. (kenshohara/3D-ResNets-PyTorch, ``models/resnet.py``),
  module for module, so the Kinetics checkpoints people actually have (``r3d101_KM_200ep.pth``,
  ``resnet-101-kinetics.pth``) load with strict key matching once ``module.`` prefixes are removed.
* ``resnet18_2d``: torchvision's ``resnet18`` with the same module names, so torchvision's ImageNet file
  (``resnet18-f37072fd.pth``) loads.

Both drop the global pooling and the classifier: end-to-end models attend over the last feature map.
Weight files are read by ``read_state_dict``: safetensors always, torch pickles only when the caller
opts in (``allow_pickle=True``), and even then through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aver.errors import ConfigError, MissingWeightsError

# Hara's generate_model: depth -> (block, blocks per stage). 10/18/34 BasicBlock, deeper Bottleneck.
RESNET3D_LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
# Shortcut "B": 1x1x1 conv + BN where the shape changes (Hara's default and the r3d*_KM checkpoints);
# "A": parameter-free zero-padded identity (Hara's older resnet-18/34 Kinetics checkpoints).
SHORTCUTS = ("A", "B")


class _ZeroPadShortcut(nn.Module):
    """Hara's shortcut type A: strided identity, new channels filled with zeros (no parameters)."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.planes - x.shape[1]))


class _Block(nn.Module):
    """Basic (two 3x3(x3) convs) or bottleneck (1-3-1) residual block; names as Hara / torchvision."""

    def __init__(self, kind: str, dims: int, cin: int, planes: int, stride: int, down: nn.Module | None):
        super().__init__()
        conv, bn = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = down
        if kind == "basic":
            self.conv1 = conv(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = bn(planes)
            self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = bn(planes)
            self.convs = 2
        else:
            self.conv1 = conv(cin, planes, 1, bias=False)
            self.bn1 = bn(planes)
            self.conv2 = conv(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = bn(planes)
            self.conv3 = conv(planes, planes * 4, 1, bias=False)
            self.bn3 = bn(planes * 4)
            self.convs = 3

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for i in range(1, self.convs + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.convs:
                out = self.relu(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetFeatures(nn.Module):
    """A ResNet trunk (2-D or 3-D) that returns its last feature map instead of class scores.

    ``dropped_prefixes`` lists the state-dict keys of the full published network that this trunk
    does not have on purpose (the classifier, stages cut off by ``stages``): loaders skip them.
    """

    def __init__(
        self,
        dims: int,
        kind: str,
        layers: Iterable[int],
        width: int = 64,
        in_chans: int = 3,
        shortcut: str = "B",
        stages: int = 4,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r}; choose one of {SHORTCUTS}")
        if not 1 <= stages <= 4:
            raise ValueError(f"stages must be 1..4, got {stages}")
        conv, bn, pool = (
            (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)
            if dims == 3
            else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
        )
        # Hara: 7x7x7 kernel, stride (1, 2, 2) -- no temporal stride in conv1; torchvision: 7x7 stride 2.
        stride, pad = ((1, 2, 2), (3, 3, 3)) if dims == 3 else (2, 3)
        self.dims, self.kind, self.stages = dims, kind, stages
        self.conv1 = conv(in_chans, width, 7, stride, pad, bias=False)
        self.bn1 = bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool(kernel_size=3, stride=2, padding=1)
        cin, expansion = width, (1 if kind == "basic" else 4)
        for i, n in enumerate(list(layers)[:stages]):
            planes, s = width * 2**i, (1 if i == 0 else 2)
            blocks = []
            for j in range(n):
                down = None
                if j == 0 and (s != 1 or cin != planes * expansion):
                    down = self._shortcut(shortcut, conv, bn, cin, planes * expansion, s)
                blocks.append(_Block(kind, dims, cin, planes, s if j == 0 else 1, down))
                cin = planes * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin
        self.dropped_prefixes = ("fc.",) + tuple(f"layer{i + 1}." for i in range(stages, 4))
        self._init_weights()

    @staticmethod
    def _shortcut(kind: str, conv: type, bn: type, cin: int, cout: int, stride: int) -> nn.Module:
        if kind == "A":
            return _ZeroPadShortcut(cout, stride)
        return nn.Sequential(conv(cin, cout, 1, stride, bias=False), bn(cout))

    def _init_weights(self) -> None:
        # As Hara and torchvision: He (fan-out) for convs, BN scale 1 / shift 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, (T,) H, W]`` -> the last stage's map ``[B, out_channels, (T',) h, w]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def feature_size(size: int, stages: int = 4) -> int:
    """Spatial side of the map ``ResNetFeatures(stages=stages)`` returns for a ``size`` input.

    conv1, the max-pool and the first block of stages 2..4 each map x to ceil(x / 2) (kernel 7 pad 3
    or kernel 3 pad 1, stride 2); the attention modules need this at construction.
    """
    for _ in range(stages + 1):
        size = (size + 1) // 2
    return size


def resnet3d(
    depth: int, width: int = 64, in_chans: int = 3, shortcut: str = "B", stages: int = 4
) -> ResNetFeatures:
    """Hara et al.'s 3D ResNet of ``depth`` without pooling and classifier.

    ``width`` is the first stage's channel count (64 in every published network; Hara's
    ``widen_factor`` times 64); a tiny width gives a network for tests. ``stages`` < 4 stops early
    (e.g. 3: conv4_x, 1024 channels for depth >= 50).
    """
    if depth not in RESNET3D_LAYERS:
        raise ValueError(f"3D ResNet depth {depth} not in {sorted(RESNET3D_LAYERS)}")
    kind, layers = RESNET3D_LAYERS[depth]
    return ResNetFeatures(3, kind, layers, width, in_chans, shortcut, stages)


def resnet18_2d(in_chans: int = 3, width: int = 64) -> ResNetFeatures:
    """torchvision's ``resnet18`` trunk (same module names), no avgpool / fc.

    A 1-channel spectrogram uses ``in_chans=1``: loading 3-channel weights then sums conv1's kernels
    over the colour axis, which is exactly the network applied to the image repeated on 3 channels,
    at a third of conv1's cost.
    """
    return ResNetFeatures(2, "basic", (2, 2, 2, 2), width, in_chans, "B", 4)


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, Tensor]:
    """Tensors of a weight file: ``.safetensors``, or a torch pickle (a state_dict, or a dict with one
    under ``state_dict`` as Hara's checkpoints have).

    A pickle can run code when it is read, so it is refused unless ``allow_pickle``; even then it is
    read with ``weights_only=True`` (tensors and plain containers only).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if not allow_pickle:
        raise ConfigError(
            f"{path} is a torch pickle, which can run code when loaded; pass allow_pickle=True "
            "(config field allow_pickle) if you trust it, or convert it to .safetensors"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for whole pickled modules; others for non-torch files
        raise ConfigError(
            f"{path} could not be read as weights only ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "if it is a pickled module, load it once where you trust it and save its state_dict"
        ) from e
    if isinstance(obj, dict) and _is_tensor_dict(obj.get("state_dict")):
        obj = obj["state_dict"]
    if not _is_tensor_dict(obj):
        raise ConfigError(f"{path} holds no state_dict (a dict of tensors, or one under 'state_dict')")
    return dict(obj)


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if p and key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _adapt_input_conv(state: dict[str, Tensor], own: dict[str, Tensor]) -> None:
    """3-channel conv1 weights into a 1-channel conv1: sum over the colour axis (see ``resnet18_2d``)."""
    w, mine = state.get("conv1.weight"), own.get("conv1.weight")
    if w is not None and mine is not None and w.shape[1] != mine.shape[1] and mine.shape[1] == 1:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)


def _describe(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_file(
    model: nn.Module,
    path: str | Path,
    allow_pickle: bool = False,
    strip_prefixes: tuple[str, ...] = ("module.",),
) -> None:
    """Load a weight file into ``model`` with strict key and shape matching.

    Keys lose any leading ``strip_prefixes`` (DataParallel's ``module.`` by default; add e.g.
    ``"backbone."`` for a file saved from a wrapper); keys under ``model.dropped_prefixes`` (the
    classifier the model replaced) are skipped. Missing, unexpected or mis-shaped keys raise a
    ``ConfigError`` that names them and the file.
    """
    state = {_strip(k, strip_prefixes): v for k, v in read_state_dict(path, allow_pickle).items()}
    dropped = tuple(getattr(model, "dropped_prefixes", ()))
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    own = model.state_dict()
    _adapt_input_conv(state, own)
    # BatchNorm's step counter is absent from files saved by old torch versions; it is not a weight.
    missing = {k for k in own if k not in state and not k.endswith("num_batches_tracked")}
    unexpected = set(state) - set(own)
    shapes = {k for k in set(state) & set(own) if state[k].shape != own[k].shape}
    if missing or unexpected or shapes:
        parts = [f"{path} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"{len(missing)} missing keys ({_describe(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_describe(unexpected)})")
        if shapes:
            bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(shapes)]
            parts.append(f"{len(shapes)} shape mismatches ({_describe(bad)})")
        raise ConfigError(" ".join(parts) + "; is it the right architecture / depth / width?")
    model.load_state_dict(state, strict=False)


def load_hara_checkpoint(model: nn.Module, path: str | Path, allow_pickle: bool = False) -> None:
    """Load a 3D-ResNets-PyTorch checkpoint (``{'arch', 'state_dict': {'module.conv1.weight', ...}}``,
    a bare state_dict or a ``.safetensors`` file) into a ``resnet3d`` trunk; ``fc`` is dropped."""
    load_state_dict_file(model, path, allow_pickle, strip_prefixes=("module.",))
