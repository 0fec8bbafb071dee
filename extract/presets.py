"""Presets: ``paper`` (the real models of DE-III) and ``tiny`` (small random models for tests/demo).

A preset fills an ``ExtractConfig``; CLI flags and ``--set section.key=value`` override it.
"""

from __future__ import annotations

import os

from aver.registry import Registry
from aver.utils import aver_home

from .config import AudioEncoderConfig, ExtractConfig, FlowConfig, ImageEncoderConfig

PRESETS: Registry = Registry("preset")

FACE_WEIGHTS_HELP = (
    "EfficientNet-B2 face weights are not bundled. Download one of Savchenko's files "
    "(github.com/sb-ai-lab/EmotiEffLib: state_vggface2_enet2.pt = VGGFace2, as DE-III; or enet_b2_8_best.pt, "
    "as VAVL) on a machine with internet and pass --face-weights FILE (or set AVER_FACE_WEIGHTS). "
    "The enet_b2_* files are pickled modules: add --allow-pickle once, or convert them with "
    "`aver convert-weights FILE OUT.safetensors --allow-pickle`."
)


@PRESETS.register("paper")
def paper(dataset: str) -> ExtractConfig:
    """DE-III: Perceiver IO flow, EfficientNet-B2 (VGGFace2) at 224, wav2vec2-large-robust."""
    return ExtractConfig(
        dataset=dataset,
        preset="paper",
        flow=FlowConfig(backend="perceiver", weights="deepmind/optical-flow-perceiver"),
        image=ImageEncoderConfig(
            arch="tf_efficientnet_b2", weights=os.environ.get("AVER_FACE_WEIGHTS"), input_size=224
        ),
        audio=AudioEncoderConfig(model="facebook/wav2vec2-large-robust", layers=(-1,)),
    )


@PRESETS.register("tiny")
def tiny(dataset: str) -> ExtractConfig:
    """Small random-initialised models built from configs (marked ``tiny`` in the provenance)."""
    from .tiny import materialise_tiny_models

    paths = materialise_tiny_models(aver_home() / "tiny")
    return ExtractConfig(
        dataset=dataset,
        preset="tiny",
        flow=FlowConfig(backend="dis", variant="medium"),
        image=ImageEncoderConfig(arch=paths["image_arch"], weights=paths["image_weights"], input_size=112),
        audio=AudioEncoderConfig(model=paths["audio_model"], layers=(-1,)),
    )


def preset_config(name: str, dataset: str) -> ExtractConfig:
    """The ``ExtractConfig`` of preset ``name`` for ``dataset`` (unknown names: ``ConfigError``)."""
    return PRESETS.get(name)(dataset)
