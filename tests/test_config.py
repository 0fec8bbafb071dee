"""Config dataclasses: validation, overrides, hashing."""

from __future__ import annotations

import pytest

from aver.errors import ConfigError
from aver.extract.config import ExtractConfig, FaceConfig
from aver.overrides import apply_overrides


def test_hash_ignores_runtime_but_not_models_or_precision():
    a = ExtractConfig(dataset="ravdess")
    b = apply_overrides(a, ["runtime.image_batch=8", 'runtime.device="cuda"', "runtime.amp=false"])
    c = apply_overrides(a, ["face.margin=0.3"])
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()
    # CUDA's default is bf16 autocast: other numbers, so another hash (issue 21 #4)
    assert a.config_hash() != apply_overrides(a, ['runtime.device="cuda"']).config_hash()


def test_round_trip_through_dict():
    a = apply_overrides(ExtractConfig(dataset="x"), ["audio.layers=[6, 12]", "flow.train_size=[32, 40]"])
    b = ExtractConfig.from_dict(a.to_dict())
    assert b == a and b.audio.layers == (6, 12) and b.flow.train_size == (32, 40)


@pytest.mark.parametrize(
    "override, message",
    [
        ("face.smooth_window=4", "odd"),
        ("flow.window=0", "window"),
        ('runtime.device="tpu"', "device"),
        ("face.nope=1", "unknown key"),
        ("nosection.x=1", "unknown key .nosection"),
        ("max_seconds=-1", "max_seconds"),
    ],
)
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(ExtractConfig(dataset="x"), [override])


def test_face_thresholds_need_three():
    with pytest.raises(ConfigError, match="three"):
        FaceConfig(thresholds=(0.6, 0.7))
