"""The one contract every trainable system meets, built-in or installed as a plugin.

A system is a model family of a paper (DE-III, Mocanu 2023, AVT-CA, or a lab's own) that the one
trainer (``aver.train.recipe``) trains, saves, restores, evaluates, reports and predicts with,
without knowing its name. Everything the trainer needs is *declared* here, never probed:

- what it trains on: ``trains_on`` is ``"features"`` (the cache's frame / flow / audio feature
  sequences) or ``"inputs"`` (the cache's face crops and 16 kHz waveforms, ``inputs/*``), and
  ``input_spec(config)`` gives the frames and image size it samples from the crops;
- its configuration: ``config_class`` (a frozen dataclass), ``presets`` (``paper`` and ``tiny``:
  model sizes and the paper's optimisation) and ``variants`` (named ablations, each citing the
  paper's table and row), all ``Registry`` objects, so registry key = CLI choice = name on record;
- how it is built: ``make_config`` (preset, then variant, then ``--set model.KEY`` overrides, then
  what the cache decides) and ``build(config, names)``: the one constructor used for training,
  restoring a checkpoint, evaluation, the report and ``aver predict``;
- its loss beside the task's cross-entropy / CCC (``extra_loss``: metric terms, auxiliary losses)
  and its batch sampler (``batch_sampler``; ``None``: length-bucketed shuffled batches);
- whether training augments the crops (``augment``; off unless the system's paper names it);
- the paper it reproduces and the rows of its tables it can be compared with (``paper_rows``).

A system registers with ``@register_system`` in the module that an ``aver.systems`` entry point
names (``docs/adding-a-model.md``); ``aver.train.systems.SYSTEMS`` finds every one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aver.errors import ConfigError
from aver.overrides import from_dict
from aver.registry import Registry

FEATURES, INPUTS = "features", "inputs"


@dataclass(frozen=True)
class Variant:
    """A named ablation: the config fields it sets, and the paper table/row it reproduces.

    ``cites`` names the paper's table and row (``"Table 2, None-IFE"``) or says that the variant is
    a reading or an ablation of ours (``"ours: ..."``). Every variant sets every switch it is about,
    so applying it to another variant's config gives the same model as applying it to the default.
    """

    sets: Mapping[str, Any]
    cites: str
    summary: str = ""


@dataclass(frozen=True)
class Preset:
    """Model sizes (``model``: config fields) and optimisation (``train``: ``TrainConfig`` fields,
    ``batch_size`` for ``data.batch_size``) of one named preset."""

    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass(frozen=True)
class InputSpec:
    """What an ``inputs`` system samples from the cached crops: ``n_frames`` uniformly spread frames,
    resized to ``image_size`` px."""

    n_frames: int
    image_size: int


@dataclass(frozen=True)
class DataSpec:
    """What a cache decides about a model: feature widths (``attrs.aver.dims``), the class names
    (or continuous target names) and the task (``classification`` or ``regression``)."""

    names: tuple[str, ...]
    task: str = "classification"
    dims: Mapping[str, int] = field(default_factory=dict)


class System:
    """Base class with the defaults; a system overrides what differs (see the module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    paper: ClassVar[str]  # the paper, as cited in the report
    trains_on: ClassVar[str]  # FEATURES or INPUTS
    config_class: ClassVar[type]
    presets: ClassVar[Registry[Preset]]
    variants: ClassVar[Registry[Variant]]
    default_variant: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    augment: ClassVar[bool] = False  # crop / flip / brightness on training crops (INPUTS systems)
    default: ClassVar[bool] = False  # the CLI's default, and the system of runs that predate systems
    # runs/<store>/<system>/<variant>; False keeps runs/<store>/<variant> (DE-III's folders before 0.4)
    system_folder: ClassVar[bool] = True
    # config fields that name pretrained weight files: left out when a checkpoint is restored
    weight_fields: ClassVar[tuple[str, ...]] = ()

    # -- configuration ----------------------------------------------------------------------------
    def model_fields(self) -> list[str]:
        """Fields ``--set model.KEY=...`` may change (what the cache decides is not among them)."""
        return [f.name for f in dataclasses.fields(self.config_class) if f.name not in self.cache_fields()]

    def cache_fields(self, data: DataSpec | None = None) -> dict[str, Any]:
        """Config fields the cache decides (feature widths, number of outputs); names only when
        ``data`` is None."""
        return {}

    def make_config(self, preset: str, variant: str, overrides: Mapping[str, Any], data: DataSpec) -> Any:
        """The config of ``variant`` on ``preset``: preset sizes, then the variant's switches, then
        ``overrides``, then the fields the cache decides. Refusals are ``ConfigError``."""
        fields = {
            **self.presets.get(preset).model,
            **self.variants.get(variant).sets,
            **overrides,
            **self.cache_fields(data),
        }
        try:
            return self.config_class(**fields)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.name} model of variant {variant!r}: {e}") from e

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        """The config a checkpoint recorded (``model_config``); a config class with a ``from_dict``
        classmethod fills fields an older aver did not record with the values it used then."""
        own = getattr(self.config_class, "from_dict", None)
        try:
            return own(dict(data)) if own is not None else from_dict(self.config_class, dict(data))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.name}: the recorded model config cannot be rebuilt: {e}") from e

    def training(self, preset: str) -> dict[str, Any]:
        """``TrainConfig`` fields of ``preset`` (the paper's optimiser for ``paper``). Without a
        ``patience`` the paper stops on no validation criterion: patience = epochs."""
        t = dict(self.presets.get(preset).train)
        out: dict[str, Any] = {}
        if "batch_size" in t:
            out["data"] = {"batch_size": t.pop("batch_size")}
        if "epochs" in t:
            t.setdefault("patience", t["epochs"])
        return {**t, **out}

    # -- building ---------------------------------------------------------------------------------
    def build(self, config: Any, names: Iterable[str], pretrained: bool = True) -> Any:
        """The one constructor (training, restoring, evaluation, report, predict): the ``nn.Module``
        of ``config`` for the classes (or targets) ``names``. ``pretrained`` False leaves out the
        pretrained-weight files (``weight_fields``; a checkpoint restores every weight)."""
        if not pretrained and self.weight_fields:
            config = dataclasses.replace(config, **dict.fromkeys(self.weight_fields))
        return self.model(config, list(names))

    def model(self, config: Any, names: list[str]) -> Any:
        """The system's ``nn.Module`` for ``config`` and the class (or target) ``names``."""
        raise NotImplementedError

    def restore(self, info: Mapping[str, Any]) -> Any:
        """The architecture a run recorded (``config.json`` / ``checkpoint.json``), freshly built."""
        return self.build(self.config_from_dict(info["model_config"]), info["names"], pretrained=False)

    def config_dict(self, config: Any) -> dict[str, Any]:
        """``config`` as JSON-ready data (what runs and checkpoints record)."""
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))

    # -- data and training ------------------------------------------------------------------------
    def input_spec(self, config: Any) -> InputSpec | None:
        """For ``inputs`` systems: the frames and image size the model takes, from its config's
        ``n_frames`` and ``image_size`` (``None`` for ``features`` systems)."""
        if self.trains_on != INPUTS:
            return None
        return InputSpec(int(config.n_frames), int(config.image_size))

    def extra_loss(self, model: Any, out: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
        """A loss added to the task loss (metric or auxiliary terms), or ``None``."""
        return None

    def batch_sampler(
        self, config: Any, labels: list[int], names: list[str], batch_size: int, seed: int
    ) -> Any | None:
        """An epoch sampler (``set_epoch(e)``; iterates lists of clip indices) or ``None``."""
        return None

    def init(self, config: Any) -> str:
        """How the trainable backbones were initialised (recorded with the run; compared in the report)."""
        return "random"

    def init_flags(self, paper_init: str) -> str:
        """The flags that would give the backbone initialisation ``paper_init`` (for the report)."""
        return ""

    # -- comparison -------------------------------------------------------------------------------
    def paper_rows(self) -> list[dict[str, Any]]:
        """The rows of the paper's tables this system can be compared with (``paper_results.json``
        rows whose ``system`` is this one); a plugin may return its own."""
        from .paper import stored_rows

        return [r for r in stored_rows() if r["system"] == self.name]

    def describe_variant(self, name: str) -> str:
        v = self.variants.get(name)
        sets = ", ".join(f"{k}={val}" for k, val in v.sets.items())
        return f"{v.summary or sets} [{v.cites}]"


def variants_from(table: Mapping[str, Mapping[str, Any]], cites: Mapping[str, str]) -> Registry[Variant]:
    """A variant registry from plain tables: ``{name: {field: value}}`` and ``{name: citation}``
    (every variant must cite its paper's table and row, or say ``"ours: ..."``)."""
    missing = sorted(set(table) - set(cites))
    if missing:
        raise TypeError(f"variants {missing} cite no paper table/row (say 'ours: ...' for a reading)")
    registry: Registry[Variant] = Registry("model variant")
    for name, sets in table.items():
        registry.add(name, Variant(dict(sets), cites[name]))
    return registry


def presets_from(table: Mapping[str, Mapping[str, Any]]) -> Registry[Preset]:
    """A preset registry from ``{name: {field: value, ..., "train": {...}}}`` (model fields, and
    under ``"train"`` the optimisation)."""
    registry: Registry[Preset] = Registry("training preset")
    for name, fields in table.items():
        model = {k: v for k, v in fields.items() if k != "train"}
        registry.add(name, Preset(model, dict(fields.get("train", {}))))
    return registry
