"""DE-III model family: padding-safe sequence encoders, the DE-III model and its ablation variants."""

from __future__ import annotations

from aver.train.models.conformer import ENCODERS, ConformerEncoder, TransformerEncoder, build_encoder
from aver.train.models.de3 import DE3, DE3Config, pair_frames_with_flow
from aver.train.models.variants import VARIANTS, create_model, variant_config

__all__ = [
    "DE3",
    "ENCODERS",
    "VARIANTS",
    "ConformerEncoder",
    "DE3Config",
    "TransformerEncoder",
    "build_encoder",
    "create_model",
    "pair_frames_with_flow",
    "variant_config",
]
