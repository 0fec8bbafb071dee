"""Training configuration: one dataclass, resolved from a preset, stored in every run and checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .data import DataConfig

HEADS = ("video", "audio", "fusion")


@dataclass
class TrainConfig:
    """Everything a run needs. ``model`` overrides fields of the model config (``DE3Config``).

    Presets (``TRAIN_PRESETS``): ``paper`` = the paper's hyper-parameters (AdamW lr 5e-6, weight
    decay 5e-2, up to 20 epochs, Conformer 512-d / 8 heads / 3-3-2 blocks, 1408-d outputs, MLP
    heads 512); ``tiny`` = a small model with a larger learning rate, for tests and the demo.
    """

    cache: str
    fold: int = 1
    out: str = "runs/run"
    variant: str = "de3"
    preset: str = "paper"
    epochs: int = 20
    lr: float = 5e-6
    weight_decay: float = 5e-2
    patience: int = 5  # epochs without validation improvement before stopping (paper: not given)
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    head: str = "best"  # head reported on test: best on validation, or video | audio | fusion
    resume: bool = True  # continue from <out>/checkpoint/last.* when present
    grad_clip: float = 1.0
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if self.fold < 1:
            raise ValueError("fold counts from 1")
        if self.epochs < 1 or self.patience < 1:
            raise ValueError("epochs and patience must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.head not in ("best", *HEADS):
            raise ValueError(f"head must be best, video, audio or fusion, not {self.head!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be cpu or cuda[:N], not {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"lr": 5e-6, "weight_decay": 5e-2, "epochs": 20, "model": {}},
    "tiny": {
        "lr": 1e-3,
        "weight_decay": 1e-2,
        "epochs": 25,
        "patience": 8,
        "model": {
            "d_model": 32,
            "d_hidden": 48,
            "n_heads": 2,
            "blocks_audio": 1,
            "blocks_frames": 1,
            "blocks_flow": 1,
            "head_hidden": 32,
            "dropout": 0.1,
            "conv_kernel": 7,
        },
        "data": {"batch_size": 8},
    },
}


def preset_train_config(preset: str, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from a preset plus explicit overrides (``None`` values are ignored)."""
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    base = dict(TRAIN_PRESETS[preset])
    data = dict(base.pop("data", {}))
    model = dict(base.pop("model", {}))
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "data":
            data.update(value)
        elif key == "model":
            model.update(value)
        else:
            base[key] = value
    return TrainConfig(preset=preset, model=model, data=DataConfig(**data), **base)
