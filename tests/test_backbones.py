"""Backbones and weight loaders: the published file formats load exactly, pickles need an opt-in."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from aver.errors import ConfigError, MissingWeightsError
from aver.train.backbones import (
    feature_size,
    load_hara_checkpoint,
    load_state_dict_file,
    read_state_dict,
    resnet3d,
    resnet18_2d,
)


def _randomize(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fill every weight and BN statistic with random values (fresh init would hide swapped tensors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:
                v.fill_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def _hara_file(path, depth: int = 10, width: int = 4, seed: int = 0, stages: int = 4):
    """A checkpoint as 3D-ResNets-PyTorch writes it: DataParallel prefixes, fc, optimizer state."""
    net = resnet3d(depth, width, stages=stages)
    weights = _randomize(net, seed)
    state = {f"module.{k}": v for k, v in weights.items()}
    state["module.fc.weight"] = torch.randn(400, net.out_channels)
    state["module.fc.bias"] = torch.randn(400)
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}
    torch.save({"epoch": 200, "arch": f"resnet-{depth}", "state_dict": state, "optimizer": optimizer}, path)
    return weights


def test_hara_checkpoint_loads_exactly(tmp_path):
    path = tmp_path / "r3d10_K_200ep.pth"
    weights = _hara_file(path)
    model = resnet3d(10, 4)
    load_hara_checkpoint(model, path, allow_pickle=True)
    _assert_same(model, weights)


def test_a_pickle_needs_the_opt_in(tmp_path):
    path = tmp_path / "r3d10.pth"
    _hara_file(path)
    with pytest.raises(ConfigError, match=r"r3d10\.pth.*allow_pickle=True"):
        load_hara_checkpoint(resnet3d(10, 4), path, allow_pickle=False)
    with pytest.raises(ConfigError, match="allow_pickle"):
        read_state_dict(path)


def test_a_pickled_module_is_refused_even_with_the_opt_in(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(resnet18_2d(width=4), path)  # a whole module: weights_only cannot read it
    with pytest.raises(ConfigError, match="weights only"):
        load_state_dict_file(resnet18_2d(width=4), path, allow_pickle=True)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(MissingWeightsError, match="nope.safetensors"):
        load_state_dict_file(resnet18_2d(width=4), tmp_path / "nope.safetensors")


def test_mismatched_keys_and_shapes_give_a_clear_error(tmp_path):
    path = tmp_path / "r3d18.pth"
    _hara_file(path, depth=18, width=4)
    with pytest.raises(ConfigError, match=r"r3d18\.pth does not fit.*unexpected keys \(layer1\.1\."):
        load_hara_checkpoint(resnet3d(10, 4), path, allow_pickle=True)
    with pytest.raises(ConfigError, match=r"80 missing keys \(layer1\.2\."):
        load_hara_checkpoint(resnet3d(34, 4), path, allow_pickle=True)
    with pytest.raises(ConfigError, match=r"shape mismatches \(bn1\.bias \(4,\) vs \(8,\)"):
        load_hara_checkpoint(resnet3d(18, 8), path, allow_pickle=True)


def test_a_trunk_cut_after_conv4_skips_the_checkpoints_conv5(tmp_path):
    path = tmp_path / "r3d50.pth"
    weights = _hara_file(path, depth=50, width=2)
    model = resnet3d(50, 2, stages=3)
    load_hara_checkpoint(model, path, allow_pickle=True)
    _assert_same(model, {k: v for k, v in weights.items() if not k.startswith("layer4.")})
    assert model.out_channels == 2 * 4 * 4  # conv4_x: 4 x width x expansion (1024 at width 64)


def test_torchvision_resnet18_file_loads_and_computes_the_same():
    tv = pytest.importorskip("torchvision")
    ref = tv.models.resnet18(weights=None).eval()
    _randomize(ref)
    mine = resnet18_2d().eval()
    assert {k: v.shape for k, v in mine.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items() if not k.startswith("fc.")
    }
    mine.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        want = nn.Sequential(*list(ref.children())[:-2])(x)
        assert torch.allclose(mine(x), want, atol=1e-5)


def test_torchvision_style_pth_and_the_one_channel_conv1(tmp_path):
    src = resnet18_2d(width=8)
    weights = _randomize(src)
    full = dict(weights, **{"fc.weight": torch.randn(1000, 64), "fc.bias": torch.randn(1000)})
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(full, path)
    model = resnet18_2d(width=8)
    load_state_dict_file(model, path, allow_pickle=True)
    _assert_same(model, weights)
    mono = resnet18_2d(in_chans=1, width=8).eval()
    load_state_dict_file(mono, path, allow_pickle=True)
    assert torch.equal(mono.conv1.weight, weights["conv1.weight"].sum(1, keepdim=True))
    # summing conv1 over colours == repeating the 1-channel image on 3 channels
    model.eval()
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        assert torch.allclose(mono(x), model(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_safetensors_with_a_prefix(tmp_path):
    src = resnet3d(18, 4)
    weights = _randomize(src, seed=3)
    path = tmp_path / "video.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in weights.items()}, str(path))
    model = resnet3d(18, 4)
    with pytest.raises(ConfigError, match="missing keys"):
        load_state_dict_file(model, path)
    load_state_dict_file(model, path, strip_prefixes=("backbone.",))  # no pickle, no opt-in needed
    _assert_same(model, weights)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(plain))
    model = resnet3d(18, 4)
    load_hara_checkpoint(model, plain, allow_pickle=False)
    _assert_same(model, weights)


@pytest.mark.parametrize(("size", "stages"), [(64, 4), (64, 3), (57, 4), (224, 4), (224, 3), (33, 2)])
def test_feature_size_matches_the_network(size, stages):
    with torch.no_grad():
        v = resnet3d(10, 2, stages=stages)(torch.zeros(1, 3, 4, size, size))
        a = resnet18_2d(1, 2)(torch.zeros(1, 1, size, size))
    side = feature_size(size, stages)
    assert v.shape[-2:] == (side, side)
    assert a.shape[-1] == feature_size(size, 4)
    if stages == 4 and size == 224:
        assert side == 7  # the standard conv5 map, not the paper's 16x16


def test_shortcut_a_has_no_parameters_and_runs():
    b, a = resnet3d(18, 4, shortcut="B"), resnet3d(18, 4, shortcut="A")
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in b.parameters())
    assert not any("downsample" in k for k in a.state_dict())
    out = a(torch.randn(2, 3, 4, 32, 32))
    assert out.shape == (2, 32, 1, 1, 1) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="depth 11"):
        resnet3d(11)
