"""wav2vec2 (transformers) hidden states of 16 kHz mono audio, from a hub id or a local folder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aver.errors import ConfigError, MissingWeightsError
from aver.utils import autocast

from ..config import AudioEncoderConfig
from .weights import sha256_file

log = logging.getLogger(__name__)

_WEIGHT_GLOBS = ("model*.safetensors", "pytorch_model*.bin")


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder on disk."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _missing_model_error(name: str, err: Exception) -> MissingWeightsError:
    return MissingWeightsError(
        f"audio model {name!r} is neither a local folder nor in the Hugging Face cache, and it cannot be "
        f"downloaded here ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Download it once on a "
        f"machine with internet (`huggingface-cli download {name}`, then copy the cache folder "
        f"~/.cache/huggingface/hub over), or save it with save_pretrained into a folder and pass that "
        f"folder via --audio-model DIR (audio.model=DIR)."
    )


def _weights_fingerprint(files: list[Path]) -> str | None:
    """sha256 of the single weight file, or of the ``name:sha256`` lines of a sharded checkpoint."""
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name}:{sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _hub_provenance(repo_id: str) -> dict[str, Any]:
    """Revision and weight sha256 of a model resolved from the local hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    out: dict[str, Any] = {"revision": None, "weights_sha256": None}
    config_path = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(config_path, str):
        out["revision"] = Path(config_path).parent.name  # .../snapshots/<commit>/config.json
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str):
            blob = Path(path).resolve()
            # The cache names LFS blobs by their sha256: no need to read a 1.2 GB file.
            is_sha = re.fullmatch(r"[0-9a-f]{64}", blob.name) is not None
            out["weights_sha256"] = blob.name if is_sha else sha256_file(blob)
            out["weights_file"] = name
            break
    return out


class AudioEncoder:
    """Frozen wav2vec2: waveform ``[S]`` float32 at 16 kHz -> hidden states ``[T, L, dim]``.

    ``L = len(cfg.layers)``; ``hidden_states[0]`` is the projected CNN output, ``[-1]`` the last
    transformer layer. The waveform is normalised to zero mean and unit variance when the model's
    feature-extractor config says ``do_normalize`` (the default when a folder has none).
    """

    def __init__(
        self, cfg: AudioEncoderConfig, device: str = "cpu", amp: bool = False, batch: int = 16
    ) -> None:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        self.cfg = cfg
        self.batch = max(int(batch), 1)
        self.device = torch.device(device)
        self.amp = bool(amp)  # bf16 autocast on CUDA, and on the CPU when asked (runtime.amp=true)
        folder = Path(cfg.model).expanduser()
        self.local = folder.is_dir()
        if not self.local and _looks_like_path(cfg.model):
            raise MissingWeightsError(f"audio model folder not found: {folder} (audio.model / --audio-model)")
        source = str(folder) if self.local else cfg.model
        if self.local and not (folder / "config.json").is_file():
            raise MissingWeightsError(f"{folder}: no config.json; expected a save_pretrained() model folder")
        try:
            model = Wav2Vec2Model.from_pretrained(source)
        except OSError as err:
            if self.local:
                raise MissingWeightsError(f"{folder}: cannot load a wav2vec2 model ({err})") from err
            raise _missing_model_error(cfg.model, err) from err
        self.feature_extractor = self._load_feature_extractor(Wav2Vec2FeatureExtractor, source, folder)
        n_layers = int(model.config.num_hidden_layers)
        bad = [i for i in cfg.layers if not -(n_layers + 1) <= i <= n_layers]
        if bad:
            raise ConfigError(
                f"audio.layers {list(bad)} out of range for {cfg.model!r}: it has {n_layers} layers, so "
                f"hidden_states indices run from 0 (CNN projection) to {n_layers} (or -{n_layers + 1}..-1)"
            )
        self.model = model.eval().requires_grad_(False).to(self.device)
        self._provenance: dict[str, Any] | None = None

    def _load_feature_extractor(self, fe_cls: Any, source: str, folder: Path) -> Any:
        if self.local and not (folder / "preprocessor_config.json").is_file():
            log.info("%s has no preprocessor_config.json; normalising audio (do_normalize=True)", folder)
            return fe_cls(do_normalize=True, return_attention_mask=True)
        try:
            return fe_cls.from_pretrained(source)
        except OSError:
            log.warning("no feature-extractor config for %s; normalising audio (do_normalize=True)", source)
            return fe_cls(do_normalize=True, return_attention_mask=True)

    @property
    def dim(self) -> int:
        """Hidden size (1024 for wav2vec2-large)."""
        return int(self.model.config.hidden_size)

    @property
    def do_normalize(self) -> bool:
        return bool(self.feature_extractor.do_normalize)

    @property
    def frame_rate_hz(self) -> float:
        """Stored frames per second: 16000 / product of the CNN strides (50.0 for wav2vec2), or
        one per fragment hop with fragment-level encoding."""
        if self.cfg.fragment_s > 0:
            return 1.0 / self.cfg.fragment_hop_s
        return self.cfg.sample_rate / math.prod(self.model.config.conv_stride)

    def num_frames(self, num_samples: int) -> int:
        """Stored frames for ``num_samples`` samples: fragments, or wav2vec2 frames (16000 -> 49)."""
        if self.cfg.fragment_s > 0:
            return len(self.fragments(num_samples)) if self.cnn_frames(num_samples) else 0
        return self.cnn_frames(num_samples)

    def cnn_frames(self, num_samples: int) -> int:
        """Frames the CNN front end produces for ``num_samples`` samples (16000 -> 49 for wav2vec2)."""
        length = int(num_samples)
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride, strict=True):
            length = (length - kernel) // stride + 1
            if length <= 0:
                return 0
        return length

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.amp, cpu=True)

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        """Encode one clip: one forward, or overlapping windows for audio over ``cfg.window_s``.

        wave: ``[S]`` float32 mono samples at 16 kHz (amplitude as decoded, about [-1, 1]).
        Returns ``[T, L, dim]`` float32 on CPU, ``T = num_frames(S)`` (about 50 per second, or one
        per fragment), ``L = len(cfg.layers)`` in the order given.
        """
        w = np.asarray(wave, dtype=np.float32)
        if w.ndim != 1:
            raise ValueError(f"wave must be 1-D [S] samples; got shape {w.shape}")
        if self.cnn_frames(w.shape[0]) < 1:
            raise ValueError(
                f"audio too short for wav2vec2: {w.shape[0]} samples "
                f"({w.shape[0] / self.cfg.sample_rate:.4f} s) give no output frame"
            )
        if not np.isfinite(w).all():
            raise ValueError("wave contains NaN or infinite samples")
        if self.cfg.fragment_s > 0:
            return self._encode_fragments(w)
        inputs = self.feature_extractor(w, sampling_rate=self.cfg.sample_rate, return_tensors="pt")
        x = inputs["input_values"][0].to(self.device, torch.float32)  # [S], normalised over the clip
        spans = self.windows(x.shape[0])
        return torch.cat([self._forward(x[a:b])[c:d] for a, b, c, d in spans]).to("cpu", torch.float32)

    BUCKET_S = 1.0  # clips batched together are padded to a whole number of these seconds

    def encode_many(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Several clips at once, each as ``__call__`` would give it (within float tolerance).

        Clips up to ``cfg.window_s`` are padded to a whole number of ``BUCKET_S`` seconds and
        encoded ``self.batch`` at a time with an attention mask, among clips of the same padded
        length; a partial batch is filled with copies of its last clip, so every forward of a
        bucket has one shape. A clip's frames equal its forward alone within float tolerance
        (tested: 1e-4), but their last bits can depend on the clips sharing its batch: with
        ``batch`` = 1 (the CPU default) every clip is encoded alone and the store is bit-stable.
        Models whose feature encoder uses group norm (wav2vec2-base) cannot take padded batches
        and, like fragment-level encoding and longer clips, are encoded one clip at a time.
        """
        out: list[torch.Tensor | None] = [None] * len(waves)
        batchable = self.model.config.feat_extract_norm == "layer" and not self.cfg.fragment_s > 0
        limit = int(self.cfg.window_s * self.cfg.sample_rate)
        bucket = int(self.BUCKET_S * self.cfg.sample_rate)
        groups: dict[int, list[int]] = {}
        for k, w in enumerate(waves):
            n = len(w)
            if batchable and 0 < n <= limit and self.batch > 1 and self.cnn_frames(n) >= 1:
                groups.setdefault(-(-n // bucket) * bucket, []).append(k)
            else:
                out[k] = self(w)
        for length, members in groups.items():
            for a in range(0, len(members), self.batch):
                chunk = members[a : a + self.batch]
                for k, feats in zip(
                    chunk, self._padded_forward([waves[k] for k in chunk], length), strict=True
                ):
                    out[k] = feats
        return out  # type: ignore[return-value]

    def _padded_forward(self, waves: list[np.ndarray], length: int) -> list[torch.Tensor]:
        """``len(waves)`` clips padded to ``length`` samples, in a batch of exactly ``self.batch``."""
        for w in waves:
            if not np.isfinite(w).all():
                raise ValueError("wave contains NaN or infinite samples")
        rows = [np.asarray(w, dtype=np.float32) for w in waves]
        rows += [rows[-1]] * (self.batch - len(rows))
        inputs = self.feature_extractor(
            rows,
            sampling_rate=self.cfg.sample_rate,
            padding="max_length",
            max_length=length,
            return_attention_mask=True,
            return_tensors="pt",
        )
        x = inputs["input_values"].to(self.device, torch.float32)
        mask = inputs["attention_mask"].to(self.device)
        with torch.inference_mode(), self._autocast():
            hidden = self.model(x, attention_mask=mask, output_hidden_states=True).hidden_states
            stacked = torch.stack([hidden[i] for i in self.cfg.layers], dim=2).float().cpu()
        return [stacked[k, : self.cnn_frames(len(w))] for k, w in enumerate(waves)]

    def fragments(self, n_samples: int) -> list[tuple[int, int]]:
        """``(a, b)`` sample spans of DE-III's fragments: ``fragment_s`` long, every ``fragment_hop_s``.

        Fragments start at 0, hop, 2 hop, ... while a whole fragment fits; one more fragment ends
        exactly at the clip's end whenever audio is left after the last whole one (no tail is
        dropped, and every fragment has the same length, so they batch). A clip shorter than one
        fragment is one fragment.
        """
        size = round(self.cfg.fragment_s * self.cfg.sample_rate)
        hop = max(round(self.cfg.fragment_hop_s * self.cfg.sample_rate), 1)
        if n_samples <= size:
            return [(0, n_samples)]
        spans = [(a, a + size) for a in range(0, n_samples - size + 1, hop)]
        if spans[-1][1] < n_samples:
            spans.append((n_samples - size, n_samples))
        return spans

    def _encode_fragments(self, w: np.ndarray) -> torch.Tensor:
        """``[M, L, dim]``: each fragment normalised and encoded on its own (as if it were a clip),
        its wav2vec2 frames mean-pooled; fragments go through the model ``self.batch`` at a time."""
        spans = self.fragments(w.shape[0])
        out = []
        for k in range(0, len(spans), self.batch):
            pieces = [w[a:b] for a, b in spans[k : k + self.batch]]
            inputs = self.feature_extractor(pieces, sampling_rate=self.cfg.sample_rate, return_tensors="pt")
            x = inputs["input_values"].to(self.device, torch.float32)  # equal lengths: no padding
            with torch.inference_mode(), self._autocast():
                hidden = self.model(x, output_hidden_states=True).hidden_states
                out.append(torch.stack([hidden[i] for i in self.cfg.layers], dim=2).float().mean(1))
        return torch.cat(out).to("cpu", torch.float32)

    def windows(self, n_samples: int) -> list[tuple[int, int, int, int]]:
        """``(a, b, c, d)`` per forward: samples ``[a, b)`` in, output frames ``[c, d)`` kept.

        Audio up to ``cfg.window_s`` is one forward over the whole clip. Longer audio (minutes of
        video) would need attention over every frame pair at once (memory quadratic in length), so
        it is encoded in windows of ``window_s`` that overlap by ``context_s`` on each side; each
        window keeps its central frames, so every output frame saw at least ``context_s`` of audio on
        both sides (or the clip's edge) and the frames tile the clip exactly once.
        """
        total = self.cnn_frames(n_samples)
        hop = math.prod(self.model.config.conv_stride)
        field = (
            sum(
                (k - 1) * math.prod(self.model.config.conv_stride[:i])
                for i, k in enumerate(self.model.config.conv_kernel)
            )
            + 1
        )
        win, ctx = (
            int(self.cfg.window_s * self.cfg.sample_rate),
            int(self.cfg.context_s * self.cfg.sample_rate),
        )
        ctx = -(-ctx // hop) * hop  # a whole number of frames
        if n_samples <= win:
            return [(0, n_samples, 0, total)]
        core = max((win - 2 * ctx) // hop, 1)  # frames each window contributes
        spans = []
        for f0 in range(0, total, core):
            f1 = min(f0 + core, total)
            a = max(f0 * hop - ctx, 0)
            b = min((f1 - 1) * hop + field + ctx, n_samples)
            spans.append((a, b, f0 - a // hop, f1 - a // hop))
        return spans

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[S]`` normalised samples -> ``[T, L, dim]`` hidden states of the kept layers."""
        with torch.inference_mode(), self._autocast():
            out = self.model(x[None], output_hidden_states=True)
            return torch.stack([out.hidden_states[i] for i in self.cfg.layers], dim=2)[0].float()

    def provenance(self) -> dict[str, Any]:
        """Model id or folder, weight sha256 (and hub revision when read from the cache), layers, sizes."""
        if self._provenance is None:
            prov: dict[str, Any] = {"model": self.cfg.model, "source": "local" if self.local else "hub"}
            if self.local:
                folder = Path(self.cfg.model).expanduser()
                files: list[Path] = []
                for pattern in _WEIGHT_GLOBS:
                    files = sorted(folder.glob(pattern))
                    if files:
                        break
                prov["weights_file"] = ",".join(f.name for f in files) or None
                prov["weights_sha256"] = _weights_fingerprint(files)
                prov["revision"] = None
            else:
                prov.update(_hub_provenance(self.cfg.model))
            config = self.model.config
            prov.update(
                layers=list(self.cfg.layers),
                hidden_size=int(config.hidden_size),
                num_hidden_layers=int(config.num_hidden_layers),
                frame_rate_hz=self.frame_rate_hz,
                do_normalize=self.do_normalize,
                sample_rate=self.cfg.sample_rate,
                n_params=sum(p.numel() for p in self.model.parameters()),
            )
            self._provenance = prov
        return dict(self._provenance)
