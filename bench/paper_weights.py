"""Random weights of the paper's architectures, saved in the formats the real checkpoints come in.

    python bench/paper_weights.py [DIR] [--flow raft_large,raft_small,perceiver]
                                              # default DIR: $AVER_HOME/bench-weights

Writes ``DIR/state_vggface2_enet2.pt`` (a ``tf_efficientnet_b2`` state_dict saved with ``torch.save``,
as Savchenko's file is; 1408-d headless) and ``DIR/wav2vec2-large-robust/`` (``save_pretrained`` of a
randomly initialised wav2vec2 with the configuration of ``facebook/wav2vec2-large-robust``: 24
layers, 1024-d, stable layer norm). The benchmarks load them through ``--face-weights`` and
``--audio-model``, the real loaders: weights do not change the cost of a forward. Prints the two
paths. Idempotent: existing files are kept.

``--flow`` (``flow_weights``) also writes the flow models' files: ``raft_large.pth`` /
``raft_small.pth`` (torchvision state_dicts saved with ``torch.save``, the format of torchvision's
``Raft_Large_Weights`` files; ``flow.weights=FILE``) and ``optical-flow-perceiver/``
(``save_pretrained`` of a random ``PerceiverForOpticalFlow`` with the configuration of
``deepmind/optical-flow-perceiver``: 2048 latents of 512, 24 self-attention layers, window 368×496,
41.1 M parameters; ``flow.weights=DIR``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# facebook/wav2vec2-large-robust's config.json (the fields that shape the network)
WAV2VEC2_LARGE_ROBUST = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "feat_extract_norm": "layer",
    "feat_extract_activation": "gelu",
    "do_stable_layer_norm": True,
    "conv_bias": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
}


# deepmind/optical-flow-perceiver's configuration (the fields that shape the network; 41.06 M params)
OPTICAL_FLOW_PERCEIVER = {
    "num_latents": 2048,
    "d_latents": 512,
    "d_model": 322,
    "num_blocks": 1,
    "num_self_attends_per_block": 24,
    "num_self_attention_heads": 16,
    "num_cross_attention_heads": 1,
    "self_attention_widening_factor": 1,
    "cross_attention_widening_factor": 1,
    "train_size": [368, 496],
}
FLOWS = ("raft_large", "raft_small", "perceiver")


def flow_weights(folder: Path, name: str) -> Path:
    """The weights file (RAFT) or folder (Perceiver IO) of flow model ``name`` under ``folder``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    if name == "perceiver":
        from transformers import PerceiverConfig, PerceiverForOpticalFlow

        path = folder / "optical-flow-perceiver"
        if not (path / "config.json").is_file():
            torch.manual_seed(0)
            PerceiverForOpticalFlow(PerceiverConfig(**OPTICAL_FLOW_PERCEIVER)).save_pretrained(path)
        return path
    if name not in FLOWS:
        raise SystemExit(f"--flow {name!r}: one of {', '.join(FLOWS)}")
    from torchvision.models import optical_flow

    path = folder / f"{name}.pth"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(getattr(optical_flow, name)(weights=None, progress=False).state_dict(), path)
    return path


def paper_weights(folder: Path) -> tuple[Path, Path]:
    """``(face weights file, wav2vec2 folder)`` under ``folder``, created when missing."""
    import timm
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder.mkdir(parents=True, exist_ok=True)
    face = folder / "state_vggface2_enet2.pt"
    if not face.is_file():
        torch.manual_seed(0)
        model = timm.create_model("tf_efficientnet_b2", pretrained=False, num_classes=0)
        torch.save(model.state_dict(), face)
    audio = folder / "wav2vec2-large-robust"
    if not (audio / "config.json").is_file():
        torch.manual_seed(0)
        Wav2Vec2Model(Wav2Vec2Config(**WAV2VEC2_LARGE_ROBUST)).save_pretrained(audio)
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(audio)
    return face, audio


def main() -> None:
    from aver.utils import aver_home

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, help="default: $AVER_HOME/bench-weights")
    ap.add_argument("--flow", default="", help=f"also these flow models' weights: {','.join(FLOWS)}")
    args = ap.parse_args()
    folder = args.folder or aver_home() / "bench-weights"
    face, audio = paper_weights(folder)
    print(face)
    print(audio)
    for name in filter(None, args.flow.split(",")):
        print(flow_weights(folder, name))


if __name__ == "__main__":
    main()
