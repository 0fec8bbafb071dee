"""Training configuration: one dataclass, resolved from a preset, stored in every run and checkpoint.

``make_config(preset, cache=..., overrides=...)`` is the only way a config is made: the preset's
values, then explicit fields, then ``--set key=value`` overrides (``aver.overrides``), validated
in ``TrainConfig.__post_init__`` (a ``ConfigError`` before any work is done).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from aver.errors import ConfigError
from aver.overrides import apply_overrides, from_dict
from aver.registry import unknown_choice
from aver.utils import check_device

from .data import DataConfig
from .heads import HEADS


@dataclass
class TrainConfig:
    """Everything a run needs. ``model`` overrides fields of the system's model config (after its
    preset and variant: ``System.make_config``)."""

    cache: str
    fold: int = 1
    out: str = "runs/run"
    variant: str = ""  # an ablation of the system (`aver variants --model SYSTEM`); "": its full model
    preset: str = "paper"  # the system's preset: model sizes and its paper's optimisation (or "tiny")
    system: str = ""  # the model family (`--model`, aver.train.systems); "": the default system
    optimizer: str = "adamw"  # adamw or adam (each system's paper preset says which its paper used)
    # Which folds: "cache" = the folds stored in the cache; or a named protocol computed from the
    # cache's speakers and labels (aver.train.protocols), e.g. mocanu2023-10fold, avtca-random (leaky).
    protocol: str = "cache"
    epochs: int = 20
    lr: float = 5e-6
    weight_decay: float = 5e-2
    patience: int = 5  # epochs without validation improvement before stopping (paper: not given)
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    head: str = "best"  # head reported on test: best on validation, or a name in HEADS
    resume: bool = True  # continue from <out>/checkpoint/last.* when present
    grad_clip: float = 1.0  # max gradient norm (paper: not mentioned); 0 disables
    progress: bool = True  # a progress bar over epochs (stderr; off in tests and with -q)
    tensorboard: bool = True  # per-epoch scalars as TensorBoard event files in <run>/tensorboard
    resident: bool = True  # on a GPU the fold's features live on the device; batches are assembled there
    # CUDA: wait for the GPU after every step so data_s / model_s split each step exactly (slower)
    timings: bool = False
    metric: str = "auto"  # validation metric that picks epochs and the head: auto = f1_macro / ccc_mean
    # crop / flip / brightness on training crops (end-to-end systems): None = the system's own
    # default, which is off unless its paper names augmentation
    augment: bool | None = None
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    storage_options: dict[str, Any] = field(default_factory=dict)
    # A cache at a remote URL (s3://, gs://, ...) is read through a local copy of the fold's clips
    # under this folder (default $AVER_HOME/pulled; "" reads the URL directly): a second fold, a
    # resume or an evaluation fetches only clips it does not have yet.
    read_through: str | None = None

    def __post_init__(self) -> None:
        from .protocols import PROTOCOLS
        from .systems import SYSTEMS, check_variant, config_fields

        self.system = self.system or SYSTEMS.default_name()
        self.variant = self.variant or SYSTEMS.get(self.system).default_variant
        if isinstance(self.data, dict):
            self.data = from_dict(DataConfig, self.data)
        if self.fold < 1:
            raise ConfigError(f"folds count from 1 (as the papers do), not {self.fold}")
        if self.epochs < 1 or self.patience < 1:
            raise ConfigError("epochs and patience must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.grad_clip < 0:
            raise ConfigError("grad_clip must be >= 0 (0 disables clipping)")
        SYSTEMS.check(self.system)
        check_variant(self.system, self.variant)
        SYSTEMS.get(self.system).presets.check(self.preset)
        PROTOCOLS.check(self.protocol)
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError(f"optimizer must be adamw or adam, not {self.optimizer!r}")
        if self.head != "best":
            HEADS.check(self.head)
        check_device(self.device)
        known = config_fields(self.system)
        for key in self.model:
            if key not in known:
                raise ConfigError("--set model.KEY: " + unknown_choice("model key", key, known))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, d)


def make_config(
    preset: str = "paper", overrides: dict[str, Any] | list[str] | None = None, **fields: Any
) -> TrainConfig:
    """Preset ``preset``, then ``fields`` (``None`` values ignored), then dotted ``overrides``
    (``{"model.d_model": 64}`` or ``["data.batch_size=8"]``)."""
    from .systems import SYSTEMS

    system = SYSTEMS.get(fields.get("system") or SYSTEMS.default_name())
    fields["system"] = system.name
    system.presets.check(preset)
    base = copy.deepcopy(system.training(preset))
    if fields.get("variant") is None:
        fields["variant"] = system.default_variant
    base.update({k: v for k, v in fields.items() if v is not None}, preset=preset)
    if "cache" not in base:
        raise ConfigError("a training config needs the cache it trains on")
    return apply_overrides(from_dict(TrainConfig, base), overrides or {})
