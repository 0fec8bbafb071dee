"""The three systems of our papers, one registry: ``de3`` on the cached features; ``mocanu2023``
and ``avtca`` end to end on the cached face crops and waveforms (``inputs/*``, layout 2).

Registry key = ``aver train --model`` choice = ``TrainConfig.system``. Each end-to-end system lives
in one file of ``aver.train.models`` exporting its config dataclass, its model class (built as
``Model(cfg, n_classes, class_names)``), ``VARIANTS`` (named ablations: config fields) and
``PRESETS`` (``paper`` and ``tiny`` architecture sizes, and under ``"train"`` the optimisation
from its paper, read by ``training``).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from aver.errors import ConfigError
from aver.registry import Registry, unknown_choice


@dataclass(frozen=True)
class System:
    """Where a system's code is and what it trains on."""

    module: str  # under aver.train.models
    config: str  # config dataclass name
    model: str  # nn.Module class name
    end_to_end: bool  # True: trains on inputs/* (crops, waveform); False: on cached features
    default_variant: str
    summary: str


SYSTEMS: Registry[System] = Registry("model")
SYSTEMS.add(
    "de3",
    System(
        "variants", "DE3Config", "DE3", False, "de3", "DE-III on cached EfficientNet/flow/wav2vec2 features"
    ),
)
SYSTEMS.add(
    "mocanu2023",
    System(
        "mocanu2023",
        "Mocanu2023Config",
        "Mocanu2023",
        True,
        "full",
        "Mocanu et al. 2023: 3D ResNet + spectrogram ResNet-18, attention, cross-modal fusion, emotion metric loss",
    ),
)
SYSTEMS.add(
    "avtca",
    System(
        "avtca",
        "AvtcaConfig",
        "Avtca",
        True,
        "full",
        "AVT-CA (Dhanith et al.): frame encoder with attention, MFCC conv, transformer fusion, cross attention",
    ),
)


def training(system: str, preset: str) -> dict[str, Any]:
    """``TrainConfig`` fields of an end-to-end system's preset: its model module's
    ``PRESETS[preset]["train"]`` (the paper's optimiser there). Without a ``patience`` the paper
    stops on no validation criterion: patience = epochs."""
    t = dict(module(system).PRESETS[preset]["train"])
    data = {"batch_size": t.pop("batch_size")}
    t.setdefault("patience", t["epochs"])
    return {**t, "data": data}


def module(system: str):
    """The model module of ``system`` (``aver.train.models.<module>``)."""
    return importlib.import_module(f"aver.train.models.{SYSTEMS.get(system).module}")


def variants(system: str) -> dict[str, Any]:
    """Variant name -> what it sets (DE-III: the variant registry; others: config fields)."""
    m = module(system)
    return {name: m.VARIANTS.get(name) if system == "de3" else m.VARIANTS[name] for name in m.VARIANTS}


def check_variant(system: str, variant: str) -> None:
    names = list(variants(system))
    if variant not in names:
        raise ConfigError(unknown_choice(f"{system} variant", variant, names))


def config_fields(system: str) -> list[str]:
    """Model fields ``--set model.KEY=...`` may change for ``system``."""
    m = module(system)
    if system == "de3":
        from .config import _FROM_CACHE

        return [f.name for f in dataclasses.fields(m.DE3Config) if f.name not in _FROM_CACHE]
    return [f.name for f in dataclasses.fields(getattr(m, SYSTEMS.get(system).config))]


def build_end_to_end(
    system: str, preset: str, variant: str, overrides: dict[str, Any], class_names: list[str]
) -> tuple[Any, dict[str, Any]]:
    """The end-to-end model of ``system``: preset sizes, then the variant, then ``overrides``.
    Returns (model, config dict)."""
    spec, m = SYSTEMS.get(system), module(system)
    presets = m.PRESETS
    arch = {
        k: v
        for k, v in presets.get(preset, presets["tiny" if preset == "tiny" else "paper"]).items()
        if k != "train"
    }
    try:
        cfg = getattr(m, spec.config)(**{**arch, **m.VARIANTS[variant], **overrides})
        model = getattr(m, spec.model)(cfg, len(class_names), list(class_names))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{system} model of variant {variant!r}: {e}") from e
    return model, dataclasses.asdict(cfg)
