"""The paper's ablations (Tables 2 and 3) as named DE-III configurations.

``VARIANTS.get(name)(base) -> DE3Config``: each variant sets every architectural switch it is about
(``visual``, ``ife``, ``encoder``) from scratch and keeps the base's sizes, so applying a variant to
another variant's config gives the same result as applying it to the default. Registry key = CLI
choice = name stored with the run.

Table 2's rows IFE-Fusion / IFE-Audio / IFE-Video are the three prediction heads of the full model
(``DE3`` returns all three; the trainer picks one), not variants, so they are not registered here.
Table 3's rows are all evaluated with the IFE-Video head of a model that keeps both cross-attentions,
so those variants keep ``ife="both"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from aver.registry import Registry
from aver.train.models.de3 import DE3, DE3Config

Variant = Callable[[DE3Config], DE3Config]
VARIANTS: Registry[Variant] = Registry("model variant")
register_variant = VARIANTS.register


def _with(
    base: DE3Config, visual: str = "pae", ife: str = "both", encoder: str = "conformer", audio: bool = True
) -> DE3Config:
    # dataclasses.replace re-runs DE3Config.__post_init__, so an impossible combination (e.g. 'sum'
    # with different frame and flow widths) is refused here.
    return replace(base, visual=visual, ife=ife, encoder=encoder, audio=audio)


@register_variant("de3")
def de3(base: DE3Config) -> DE3Config:
    """The full model: PAE, both cross-attentions, Conformers (Table 2 and the IFE-Video row of Table 3)."""
    return _with(base)


@register_variant("none_ife")
def none_ife(base: DE3Config) -> DE3Config:
    """None-IFE (Table 2) as the paper says: RGB and flow only, no audio path, the video head alone.

    The paper: "without any inter-modality fusion, only RGB images and flow maps"."""
    return _with(base, ife="none", audio=False)


@register_variant("none_ife_av")
def none_ife_av(base: DE3Config) -> DE3Config:
    """None-IFE, another reading: both modalities and all three heads, but no inter-modal attention."""
    return _with(base, ife="none")


@register_variant("ife_video_only")
def ife_video_only(base: DE3Config) -> DE3Config:
    """Only V-cross: video attends to audio; audio features reach the audio head unchanged."""
    return _with(base, ife="video")


@register_variant("ife_audio_only")
def ife_audio_only(base: DE3Config) -> DE3Config:
    """Only A-cross: audio attends to video; video features reach the video head unchanged."""
    return _with(base, ife="audio")


@register_variant("flow_only")
def flow_only(base: DE3Config) -> DE3Config:
    """IFE-V-O: flow maps only (the flow Conformer, ``blocks_flow`` blocks), no frames, no OV-fusion."""
    return _with(base, visual="flow")


@register_variant("frames_only")
def frames_only(base: DE3Config) -> DE3Config:
    """IFE-V-F: RGB frames only (``blocks_frames`` blocks), no flow, no OV-fusion.

    Uses all T frames, including the first one that PAE drops for want of an incoming flow map.
    """
    return _with(base, visual="frames")


@register_variant("temporal_concat")
def temporal_concat(base: DE3Config) -> DE3Config:
    """IFE-V-FOSC: frames and flow concatenated along time into one Conformer, then OV-fusion.

    Ambiguity: the paper does not say how OV-fusion follows a single Conformer. We pack each clip as
    ``[v_1..v_n, o_1..o_n]``, and OV-fuse output step i with output step n + i (``TemporalConcat``).
    """
    return _with(base, visual="temporal_concat")


@register_variant("channel_concat")
def channel_concat(base: DE3Config) -> DE3Config:
    """IFE-V-FODC: ``[v_i : o_i]`` per time point into one Conformer, then OV-fusion.

    Ambiguity: OV-fusion needs two streams after one Conformer. Ours outputs ``2 * d_hidden``
    channels, split into a flow half and a frame half that OV-fusion weighs (``FusedInput``).
    """
    return _with(base, visual="channel_concat")


@register_variant("sum")
def sum_(base: DE3Config) -> DE3Config:
    """IFE-V-FODS: ``v_i + o_i`` into one Conformer, then OV-fusion on its two output halves.

    Same reading as ``channel_concat``; the halves are learned, since the sum has mixed the streams.
    """
    return _with(base, visual="sum")


@register_variant("early")
def early(base: DE3Config) -> DE3Config:
    """IFE-V-Early: OV-fusion (eq. 2-3) of the extracted frame and flow features, then one Conformer.

    The gate reads the raw ``[o_i : v_i]``; W_o, W_v project to the encoder width (``EarlyFusion``).
    """
    return _with(base, visual="early")


@register_variant("transformer")
def transformer(base: DE3Config) -> DE3Config:
    """IFE-V-Trans: the full model with vanilla Transformers instead of the visual Conformers.

    Ambiguity: the paper compares the two "at the image level", so only the frame and flow encoders
    change; the audio encoder stays ``base.encoder_audio`` (a Conformer by default).
    """
    return _with(base, encoder="transformer")


def variant_config(name: str, base: DE3Config) -> DE3Config:
    """The config of variant ``name`` built on ``base`` (which supplies dimensions and sizes)."""
    return VARIANTS.get(name)(base)


def create_model(name: str, base: DE3Config) -> DE3:
    """A freshly initialised ``DE3`` for variant ``name``."""
    return DE3(variant_config(name, base))


def build_model(variant: str, dims: dict, n_outputs: int, overrides: dict) -> tuple[DE3, dict]:
    """The model of ``variant`` for a cache's feature sizes (``attrs.aver.dims``) and ``n_outputs``
    classes or targets; ``overrides`` change other ``DE3Config`` fields. Returns (model, config dict)."""
    import dataclasses

    from aver.errors import ConfigError

    try:
        base = DE3Config(
            d_frames=int(dims["image"]),
            d_flow=int(dims["image"]),
            d_audio=int(dims["audio"]),
            n_outputs=n_outputs,
            **overrides,
        )
        cfg = variant_config(variant, base)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model of variant {variant!r}: {e}") from e
    return DE3(cfg), dataclasses.asdict(cfg)
