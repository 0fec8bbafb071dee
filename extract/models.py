"""The models of one extraction run, built once per process, and their provenance."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from aver.errors import MissingWeightsError
from aver.utils import json_hash

from .config import ExtractConfig

log = logging.getLogger(__name__)


@dataclass
class Models:
    """Face detector, flow backend, image encoder (frames and flow) and audio encoder.

    ``lock`` serialises model compute on a CPU with multi-threaded kernels: when two threads run
    torch ops at once, OpenMP gives each a different share of the cores, the summation order
    changes and the stored bits differ from run to run. With one thread per op (the CPU default,
    ``runtime.threads=1``) the kernels' results do not depend on concurrency, so the lock is a
    no-op and detection overlaps the encoders; it is a no-op on CUDA too.
    """

    detector: Any
    flow: Any
    image: Any
    audio: Any
    lock: Any = field(default_factory=contextlib.nullcontext)

    @classmethod
    def build(cls, cfg: ExtractConfig, device: str | None = None) -> Models:
        """Build every model; missing weights are reported together in one ``MissingWeightsError``."""
        from .encoders.audio import AudioEncoder
        from .encoders.image import ImageEncoder
        from .faces import FaceDetector
        from .flow import build_flow_backend

        device = device or cfg.runtime.device
        amp = bool(cfg.runtime.resolved(device).amp)
        set_tf32(cfg.runtime.tf32)
        built, missing = {}, []
        # the paper preset never falls back to a random-init face model
        no_face_weights = cfg.preset == "paper" and not cfg.image.weights
        if no_face_weights:
            from .presets import FACE_WEIGHTS_HELP

            missing.append(f"- image: no face weights given. {FACE_WEIGHTS_HELP}")
        factories = {
            "image": lambda: ImageEncoder(cfg.image, device=device, amp=amp),
            "audio": lambda: AudioEncoder(
                cfg.audio, device=device, amp=amp, batch=cfg.runtime.resolved(device).audio_batch
            ),
            "flow": lambda: build_flow_backend(cfg.flow, device, amp=amp),
            "detector": lambda: FaceDetector(cfg.face, device=device),
        }
        for name, make in factories.items():
            if name == "image" and no_face_weights:
                continue
            try:
                built[name] = make()
            except MissingWeightsError as e:
                missing.append(f"- {name}: {e}")
        if missing:
            raise MissingWeightsError(
                f"preset {cfg.preset!r} cannot run on this machine; missing weights:\n" + "\n".join(missing)
            )
        # On a CPU with multi-threaded kernels, model compute is serialised (see RuntimeConfig.threads)
        serialise = device == "cpu" and cfg.runtime.resolved(device).threads != 1
        return cls(**built, lock=threading.Lock() if serialise else contextlib.nullcontext())

    def dims(self, cfg: ExtractConfig) -> dict[str, int]:
        return {
            "image": int(self.image.dim),
            "audio": int(self.audio.dim),
            "audio_layers": len(cfg.audio.layers),
            "audio_rate_hz": float(self.audio.frame_rate_hz),
        }

    def provenance(self, cfg: ExtractConfig) -> dict[str, Any]:
        import facenet_pytorch

        return {
            "face": {
                "detector": "facenet-pytorch MTCNN",
                "version": getattr(facenet_pytorch, "__version__", "2.6.0"),
                "weights": "bundled with facenet-pytorch",
            },
            "flow": self.flow.provenance(),
            "image": self.image.provenance(),
            "audio": self.audio.provenance(),
        }


def set_tf32(on: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, set explicitly (issue 21 #5): torch enables it
    for cuDNN by default, which would make float32 features depend on the GPU generation."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)


def cache_hash(cfg: ExtractConfig, models_prov: dict[str, Any]) -> str:
    """Identity of a cache: the hashed config, with weight locations replaced by the sha256 of the
    weights they hold. Moving a weight file (or a teammate's different ``AVER_HOME``) keeps the
    hash; swapping the weights changes it."""
    config = json.loads(json.dumps(cfg.hashed_dict()))
    for section, key in (("image", "weights"), ("audio", "model"), ("flow", "weights")):
        sha = models_prov.get(section, {}).get("weights_sha256")
        if sha:
            config[section][key] = f"sha256:{sha}"
    return json_hash(config)


_CACHE: dict[str, Models] = {}


def models_for(cfg: ExtractConfig) -> Models:
    """Models for ``cfg`` built once per process (Dask workers run many shards)."""
    key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Models.build(cfg)
    return _CACHE[key]
