"""The DE-III system (Shi et al.): its ablations (Tables 2 and 3), presets and ``System`` contract.

This is the module the ``aver.systems`` entry point of DE-III names. ``VARIANTS.get(name)`` is a
``Variant`` whose ``sets`` are the architectural switches it is about (``visual``, ``ife``,
``encoder``, ``audio``), set from scratch over the base's sizes, so applying a variant to another
variant's config gives the same result as applying it to the default. Registry key = CLI choice =
name stored with the run.

Table 2's rows IFE-Fusion / IFE-Audio / IFE-Video are the three prediction heads of the full model
(``DE3`` returns all three; the trainer picks one), not variants, so they are not registered here.
Table 3's rows are all evaluated with the IFE-Video head of a model that keeps both cross-attentions,
so those variants keep ``ife="both"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

from aver.errors import ConfigError
from aver.registry import Registry
from aver.train.models.de3 import DE3, DE3Config
from aver.train.system import FEATURES, DataSpec, Preset, System, Variant
from aver.train.systems import register_system

VARIANTS: Registry[Variant] = Registry("model variant")


def register_variant(name: str, cites: str):
    """``@register_variant(name, cites)`` on a function whose docstring describes the variant and
    whose keyword defaults (via ``_with``) are the switches it sets."""

    def decorator(fn):
        sets = fn()
        VARIANTS.add(name, Variant(sets, cites, (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return decorator


def _with(visual: str = "pae", ife: str = "both", encoder: str = "conformer", audio: bool = True) -> dict:
    """Every switch a DE-III variant is about, from scratch."""
    return {"visual": visual, "ife": ife, "encoder": encoder, "audio": audio}


@register_variant(
    "de3", "Table 1 DE-III; Table 2 IFE-Video / IFE-Fusion / IFE-Audio (its heads); Table 3 IFE-Video"
)
def de3() -> dict:
    """The full model: PAE, both cross-attentions, Conformers (Table 2 and the IFE-Video row of Table 3)."""
    return _with()


@register_variant("none_ife", "Table 2, None-IFE")
def none_ife() -> dict:
    """None-IFE (Table 2) as the paper says: RGB and flow only, no audio path, the video head alone.

    The paper: "without any inter-modality fusion, only RGB images and flow maps"."""
    return _with(ife="none", audio=False)


@register_variant("none_ife_av", "ours: another reading of Table 2 None-IFE")
def none_ife_av() -> dict:
    """None-IFE, another reading: both modalities and all three heads, but no inter-modal attention."""
    return _with(ife="none")


@register_variant("ife_video_only", "ours: IFE ablation (V-cross only)")
def ife_video_only() -> dict:
    """Only V-cross: video attends to audio; audio features reach the audio head unchanged."""
    return _with(ife="video")


@register_variant("ife_audio_only", "ours: IFE ablation (A-cross only)")
def ife_audio_only() -> dict:
    """Only A-cross: audio attends to video; video features reach the video head unchanged."""
    return _with(ife="audio")


@register_variant("flow_only", "Table 3, IFE-V-O")
def flow_only() -> dict:
    """IFE-V-O: flow maps only (the flow Conformer, ``blocks_flow`` blocks), no frames, no OV-fusion."""
    return _with(visual="flow")


@register_variant("frames_only", "Table 3, IFE-V-F")
def frames_only() -> dict:
    """IFE-V-F: RGB frames only (``blocks_frames`` blocks), no flow, no OV-fusion.

    Uses all T frames, including the first one that PAE drops for want of an incoming flow map.
    """
    return _with(visual="frames")


@register_variant("temporal_concat", "Table 3, IFE-V-FOSC")
def temporal_concat() -> dict:
    """IFE-V-FOSC: frames and flow concatenated along time into one Conformer, then OV-fusion.

    Ambiguity: the paper does not say how OV-fusion follows a single Conformer. We pack each clip as
    ``[v_1..v_n, o_1..o_n]``, and OV-fuse output step i with output step n + i (``TemporalConcat``).
    """
    return _with(visual="temporal_concat")


@register_variant("channel_concat", "Table 3, IFE-V-FODC")
def channel_concat() -> dict:
    """IFE-V-FODC: ``[v_i : o_i]`` per time point into one Conformer, then OV-fusion.

    Ambiguity: OV-fusion needs two streams after one Conformer. Ours outputs ``2 * d_hidden``
    channels, split into a flow half and a frame half that OV-fusion weighs (``FusedInput``).
    """
    return _with(visual="channel_concat")


@register_variant("sum", "Table 3, IFE-V-FODS")
def sum_() -> dict:
    """IFE-V-FODS: ``v_i + o_i`` into one Conformer, then OV-fusion on its two output halves.

    Same reading as ``channel_concat``; the halves are learned, since the sum has mixed the streams.
    """
    return _with(visual="sum")


@register_variant("early", "Table 3, IFE-V-Early")
def early() -> dict:
    """IFE-V-Early: OV-fusion (eq. 2-3) of the extracted frame and flow features, then one Conformer.

    The gate reads the raw ``[o_i : v_i]``; W_o, W_v project to the encoder width (``EarlyFusion``).
    """
    return _with(visual="early")


@register_variant("transformer", "Table 3, IFE-V-Trans")
def transformer() -> dict:
    """IFE-V-Trans: the full model with vanilla Transformers instead of the visual Conformers.

    Ambiguity: the paper compares the two "at the image level", so only the frame and flow encoders
    change; the audio encoder stays ``base.encoder_audio`` (a Conformer by default).
    """
    return _with(encoder="transformer")


def variant_config(name: str, base: DE3Config) -> DE3Config:
    """The config of variant ``name`` built on ``base`` (which supplies dimensions and sizes).
    ``dataclasses.replace`` re-runs ``DE3Config.__post_init__``, so an impossible combination (e.g.
    'sum' with different frame and flow widths) is refused here."""
    return replace(base, **VARIANTS.get(name).sets)


def create_model(name: str, base: DE3Config) -> DE3:
    """A freshly initialised ``DE3`` for variant ``name``."""
    return DE3(variant_config(name, base))


def build_model(variant: str, dims: dict, n_outputs: int, overrides: dict) -> tuple[DE3, dict]:
    """The model of ``variant`` for a cache's feature sizes (``attrs.aver.dims``) and ``n_outputs``
    classes or targets; ``overrides`` change other ``DE3Config`` fields. Returns (model, config dict)."""
    data = DataSpec(tuple(str(i) for i in range(n_outputs)), dims=dims)
    try:
        cfg = variant_config(variant, DE3Config(**{**overrides, **DE3System().cache_fields(data)}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model of variant {variant!r}: {e}") from e
    return DE3(cfg), dataclasses.asdict(cfg)


PRESETS: Registry[Preset] = Registry("training preset")
PRESETS.add(
    "paper",
    # The paper's hyper-parameters: AdamW lr 5e-6, weight decay 5e-2, up to 20 epochs (section 4);
    # the model's defaults are the paper's (Conformer 512-d, 8 heads, 3/3/2 blocks, 1408-d outputs,
    # MLP heads 512).
    Preset(
        model={},
        train={"optimizer": "adamw", "lr": 5e-6, "weight_decay": 5e-2, "epochs": 20, "patience": 5},
        summary="the paper's sizes and optimisation",
    ),
)
PRESETS.add(
    "tiny",
    # A small model with a larger learning rate: tests and the demo (minutes on a CPU).
    Preset(
        model={
            "d_model": 32,
            "d_hidden": 48,
            "n_heads": 2,
            "blocks_audio": 1,
            "blocks_frames": 1,
            "blocks_flow": 1,
            "head_hidden": 32,
            "dropout": 0.1,
            "conv_kernel": 7,
            # At toy scale (32-d, one block, 25 epochs) the paper's purely linear IFE block learns
            # slowly; the tiny preset keeps the residual reading. The paper preset uses the paper's.
            "ife_ffb": "residual",
        },
        train={
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1e-2,
            "epochs": 25,
            "patience": 8,
            "batch_size": 8,
        },
        summary="tests and the demo: a small model, minutes on a CPU",
    ),
)


@register_system
class DE3System(System):
    """DE-III on the cache's frame, flow and audio feature sequences."""

    name = "de3"
    summary = "DE-III on cached EfficientNet/flow/wav2vec2 features"
    paper = "Shi et al., DE-III (Tables 1-4)"
    trains_on = FEATURES
    config_class = DE3Config
    presets = PRESETS
    variants = VARIANTS
    default_variant = "de3"
    tasks = ("classification", "regression")
    default = True
    system_folder = False  # runs/<store>/<variant>, as before systems existed

    def cache_fields(self, data: DataSpec | None = None) -> dict[str, Any]:
        names = ("d_frames", "d_flow", "d_audio", "n_outputs")
        if data is None:
            return dict.fromkeys(names)
        image, audio = int(data.dims["image"]), int(data.dims["audio"])
        return dict(zip(names, (image, image, audio, len(data.names)), strict=True))

    def model(self, config: DE3Config, names: list[str]) -> DE3:
        return DE3(config)
