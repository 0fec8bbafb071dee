"""The ``tiny`` preset's models: small random-initialised networks materialised as real weight files.

They are written to disk in the same formats as released weights (a ``.safetensors`` image backbone,
a ``save_pretrained`` wav2vec2 folder) so that the demo and the tests load them through exactly the
code paths real weights take. Seeded, so the bytes and their sha256 are the same on every call.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .encoders.weights import save_safetensors, sha256_file

log = logging.getLogger(__name__)

# Bump when anything below changes the bytes written: stale folders are then rebuilt.
TINY_RECIPE = 1
TINY_SEED = 0
TINY_IMAGE_ARCH = "test_efficientnet"
_IMAGE_FILE = "image/test_efficientnet.safetensors"
_AUDIO_DIR = "audio/wav2vec2-tiny"
_MANIFEST = "manifest.json"


def tiny_wav2vec2_config() -> Any:
    """A 2-layer, 32-wide wav2vec2 with the real model's CNN strides (320 samples = 20 ms per frame)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=32,
    )


def tiny_perceiver_config() -> Any:
    """A small ``PerceiverConfig`` for ``PerceiverForOpticalFlow`` on 32x32 windows (~0.55 M params).

    ``d_model`` must stay 322: the flow model's preprocessor emits 64 patch channels plus a fixed
    258-channel Fourier position encoding.
    """
    from transformers import PerceiverConfig

    return PerceiverConfig(
        num_latents=32,
        d_latents=64,
        d_model=322,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        train_size=[32, 32],
        attention_probs_dropout_prob=0.0,
    )


def _versions() -> dict[str, str]:
    import timm
    import transformers

    return {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__}


def _manifest_ok(root: Path, manifest: dict[str, Any]) -> bool:
    if manifest.get("recipe") != TINY_RECIPE or manifest.get("versions") != _versions():
        return False
    files = manifest.get("files", {})
    if not files:
        return False
    for rel, sha in files.items():
        path = root / rel
        if not path.is_file() or sha256_file(path) != sha:
            return False
    return True


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / _MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _build_image(dst: Path) -> None:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = timm.create_model(TINY_IMAGE_ARCH, pretrained=False, num_classes=0)
    save_safetensors(model.state_dict(), dst)


def _build_audio(staging: Path) -> None:
    """``save_pretrained`` into ``staging`` (a private folder); files are moved into place later."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = Wav2Vec2Model(tiny_wav2vec2_config())
    model.save_pretrained(staging)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(staging)


def _publish(src: Path, dst: Path) -> None:
    """Atomically move one file into place (same filesystem); identical bytes from a racing writer are fine."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(src, 0o644)
    os.replace(src, dst)


def _result(root: Path) -> dict[str, str]:
    return {
        "image_weights": str(root / _IMAGE_FILE),
        "image_arch": TINY_IMAGE_ARCH,
        "audio_model": str(root / _AUDIO_DIR),
    }


def materialise_tiny_models(root: str | os.PathLike[str]) -> dict[str, str]:
    """Write the tiny preset's weights under ``root`` (if not already there) and return their paths.

    Returns ``{"image_weights": .../test_efficientnet.safetensors, "image_arch": "test_efficientnet",
    "audio_model": folder of a save_pretrained wav2vec2}``.

    Idempotent: when ``root/manifest.json`` lists files whose sha256 still match (and the recipe and
    library versions are unchanged) nothing is written. Safe for concurrent callers: every file is
    built in a private staging folder and moved into place with ``os.replace``; the manifest goes last,
    so a reader that trusts the manifest always finds complete files.
    """
    root = Path(root).expanduser().resolve()
    manifest = _read_manifest(root)
    if manifest is not None and _manifest_ok(root, manifest):
        return _result(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        _build_image(staging / "image.safetensors")
        _build_audio(staging / "audio")
        moves = {staging / "image.safetensors": root / _IMAGE_FILE}
        for f in sorted((staging / "audio").iterdir()):
            moves[f] = root / _AUDIO_DIR / f.name
        files = {}
        for src, dst in moves.items():
            files[str(dst.relative_to(root))] = sha256_file(src)
            _publish(src, dst)
        new_manifest = {"recipe": TINY_RECIPE, "seed": TINY_SEED, "versions": _versions(), "files": files}
        manifest_tmp = staging / _MANIFEST
        manifest_tmp.write_text(json.dumps(new_manifest, indent=2, sort_keys=True) + "\n")
        _publish(manifest_tmp, root / _MANIFEST)
        log.info("materialised tiny models under %s", root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _result(root)
