"""Random weights of the paper's architectures, saved in the formats the real checkpoints come in.

    python bench/paper_weights.py [DIR]       # default: $AVER_HOME/bench-weights

Writes ``DIR/state_vggface2_enet2.pt`` (a ``tf_efficientnet_b2`` state_dict saved with ``torch.save``,
as Savchenko's file is; 1408-d headless) and ``DIR/wav2vec2-large-robust/`` (``save_pretrained`` of a
randomly initialised wav2vec2 with the configuration of ``facebook/wav2vec2-large-robust``: 24
layers, 1024-d, stable layer norm). The benchmarks load them through ``--face-weights`` and
``--audio-model``, the real loaders: weights do not change the cost of a forward. Prints the two
paths. Idempotent: existing files are kept.
"""

from __future__ import annotations

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

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else aver_home() / "bench-weights"
    face, audio = paper_weights(folder)
    print(face)
    print(audio)


if __name__ == "__main__":
    main()
