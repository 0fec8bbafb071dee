"""wav2vec2 (transformers) hidden states of 16 kHz mono audio, from a hub id or a local folder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
from collections.abc import Sequence
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
        f"machine with internet (`hf download {name}`, or `huggingface-cli download {name}` before "
        f"huggingface_hub 0.34; then copy the cache folder ~/.cache/huggingface/hub over), or save it "
        f"with save_pretrained into a folder and pass that folder via --audio-model DIR (audio.model=DIR)."
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


def _round_up(n: int, step: int) -> int:
    return -(-int(n) // step) * step


def length_batches(
    lengths: Sequence[int],
    batch: int,
    max_samples: int | None = None,
    bucket: int = 1,
    min_fill: float = 0.0,
) -> list[list[int]]:
    """Indices into ``lengths`` grouped into padded batches of clips of similar length.

    Clips are taken longest first (equal lengths in index order). A batch is padded to ``P``, its
    first (longest) clip's length rounded up to a multiple of ``bucket``; the next clip joins it
    while the batch holds fewer than ``batch`` clips, ``(clips + 1) * P <= max_samples`` (when
    given; a clip longer than that still forms a batch of its own) and the clip is at least
    ``min_fill`` times the batch's longest, so no row is padded by more than ``1 - min_fill`` of
    that length (plus the rounding to ``bucket``); otherwise it starts the next batch. Sorting first is what keeps padding small: batched in the
    given order, a 2 s clip that shares a batch with a 30 s one is a row of 93 % padding. Batches
    come longest first, so the largest forward (and any out-of-memory error) comes first. Every
    index appears in exactly one batch.
    """
    if batch < 1 or bucket < 1 or not 0.0 <= min_fill <= 1.0:
        raise ValueError(
            f"need batch >= 1, bucket >= 1 and 0 <= min_fill <= 1; got {batch}, {bucket}, {min_fill}"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    out: list[list[int]] = []
    longest = padded = 0
    for i in order:
        n = int(lengths[i])
        if out and (
            len(out[-1]) < batch
            and (max_samples is None or (len(out[-1]) + 1) * padded <= max_samples)
            and n >= min_fill * longest
        ):
            out[-1].append(i)
        else:
            out.append([i])
            longest, padded = n, _round_up(max(n, 1), bucket)
    return out


def padding_fraction(lengths: Sequence[int], batches: list[list[int]], bucket: int = 1) -> float:
    """Share of the samples in ``batches`` (each padded to its longest clip, rounded up to ``bucket``)
    that are padding: 0 for batches of equal, bucket-aligned lengths."""
    real = sum(int(lengths[i]) for rows in batches for i in rows)
    total = sum(len(rows) * _round_up(max(int(lengths[i]) for i in rows), bucket) for rows in batches if rows)
    return 1.0 - real / total if total else 0.0


class AudioEncoder:
    """Frozen wav2vec2: waveform ``[S]`` float32 at 16 kHz -> hidden states ``[T, L, dim]``.

    ``L = len(cfg.layers)``; ``hidden_states[0]`` is the projected CNN output, ``[-1]`` the last
    transformer layer. The waveform is normalised to zero mean and unit variance when the model's
    feature-extractor config says ``do_normalize`` (the default when a folder has none).
    """

    def __init__(
        self,
        cfg: AudioEncoderConfig,
        device: str = "cpu",
        amp: bool = False,
        batch: int = 16,
        max_samples: int | None = None,
    ) -> None:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        self.cfg = cfg
        self.batch = max(int(batch), 1)
        # optional cap on a padded batch's rows x padded samples (``length_batches``); None: by count
        self.max_samples = None if max_samples is None else max(int(max_samples), 1)
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

    def _check_wave(self, wave: np.ndarray) -> np.ndarray:
        """``wave`` as float32 ``[S]``; ValueError when not 1-D, too short for one frame, or not finite."""
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
        return w

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        """Encode one clip: one forward, or overlapping windows for audio over ``cfg.window_s``.

        wave: ``[S]`` float32 mono samples at 16 kHz (amplitude as decoded, about [-1, 1]).
        Returns ``[T, L, dim]`` float32 on CPU, ``T = num_frames(S)`` (about 50 per second, or one
        per fragment), ``L = len(cfg.layers)`` in the order given.
        """
        w = self._check_wave(wave)
        if self.cfg.fragment_s > 0:
            return self._encode_fragments([w])[0]
        inputs = self.feature_extractor(w, sampling_rate=self.cfg.sample_rate, return_tensors="pt")
        x = inputs["input_values"][0].to(self.device, torch.float32)  # [S], normalised over the clip
        spans = self.windows(x.shape[0])
        return torch.cat([self._forward(x[a:b])[c:d] for a, b, c, d in spans]).to("cpu", torch.float32)

    # A padded batch's length is rounded up to a whole number of these seconds, which bounds the set of
    # input shapes; rounding adds at most 0.25 s to a batch (whole seconds added up to 1 s: 40 % of a
    # CREMA-D-length 2.5 s clip).
    BUCKET_S = 0.25
    MIN_FILL = 0.5  # a clip joins a padded batch only if at least this share of the batch's longest

    def encode_many(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Several clips at once, each as ``__call__`` would give it (within float tolerance), in order.

        Clips up to ``cfg.window_s`` are sorted by length and batched with their neighbours
        (``length_batches``: at most ``self.batch`` per forward, each padded to its longest clip
        rounded up to ``BUCKET_S``, every clip at least ``MIN_FILL`` of the longest, at most
        ``self.max_samples`` padded samples when set), with an attention mask; the outputs come back
        in the order of ``waves``. A batch of one clip is a plain forward (no padding). A clip's frames
        equal its forward alone within float tolerance (tested: 1e-4), but their last bits can
        depend on the clips sharing its batch: with ``batch`` = 1 (the CPU default) every clip is
        encoded alone and the store is bit-stable. Fragment-level encoding batches the equal-length
        fragments of all clips together. Models whose feature encoder uses group norm
        (wav2vec2-base) cannot take padded batches and, like longer clips, are encoded one at a time.
        """
        if self.cfg.fragment_s > 0:
            return self._encode_fragments([self._check_wave(w) for w in waves])
        out: list[torch.Tensor | None] = [None] * len(waves)
        batchable = self.model.config.feat_extract_norm == "layer" and self.batch > 1
        limit = int(self.cfg.window_s * self.cfg.sample_rate)
        todo = []
        for k, w in enumerate(waves):
            n = len(w)
            if batchable and 0 < n <= limit and self.cnn_frames(n) >= 1:
                todo.append(k)
            else:
                out[k] = self(w)
        bucket = max(int(self.BUCKET_S * self.cfg.sample_rate), 1)
        lengths = [len(waves[k]) for k in todo]
        batches = length_batches(lengths, self.batch, self.max_samples, bucket, self.MIN_FILL)
        if batches:
            log.debug(
                "wav2vec2: %d clips in %d batches, %.0f %% padding",
                len(todo),
                len(batches),
                100 * padding_fraction(lengths, batches, bucket),
            )
        for rows in batches:
            chunk = [todo[i] for i in rows]
            if len(chunk) == 1:
                out[chunk[0]] = self(waves[chunk[0]])
                continue
            length = _round_up(max(len(waves[k]) for k in chunk), bucket)
            for k, feats in zip(chunk, self._padded_forward([waves[k] for k in chunk], length), strict=True):
                out[k] = feats
        return out  # type: ignore[return-value]

    def _padded_forward(self, waves: list[np.ndarray], length: int) -> list[torch.Tensor]:
        """``len(waves)`` clips padded to ``length`` samples, in one batch with an attention mask."""
        rows = [self._check_wave(w) for w in waves]
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
        return [stacked[k, : self.cnn_frames(len(w))] for k, w in enumerate(rows)]

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

    def _encode_fragments(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """``[M, L, dim]`` per clip: each fragment normalised and encoded on its own (as if it were a
        clip), its wav2vec2 frames mean-pooled. Fragments of all ``waves`` with the same length (all
        but those of clips shorter than one fragment) go through the model ``self.batch`` at a time,
        so short clips still fill a batch; none is padded."""
        pieces: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # length -> (clip, fragment, samples)
        for k, w in enumerate(waves):
            for j, (a, b) in enumerate(self.fragments(w.shape[0])):
                pieces.setdefault(b - a, []).append((k, j, w[a:b]))
        pooled: list[dict[int, torch.Tensor]] = [{} for _ in waves]
        for same in pieces.values():
            for s in range(0, len(same), self.batch):
                chunk = same[s : s + self.batch]
                inputs = self.feature_extractor(
                    [p for _, _, p in chunk], sampling_rate=self.cfg.sample_rate, return_tensors="pt"
                )
                x = inputs["input_values"].to(self.device, torch.float32)  # equal lengths: no padding
                with torch.inference_mode(), self._autocast():
                    hidden = self.model(x, output_hidden_states=True).hidden_states
                    means = torch.stack([hidden[i] for i in self.cfg.layers], dim=2).float().mean(1)
                for (k, j, _), m in zip(chunk, means.cpu(), strict=True):
                    pooled[k][j] = m
        return [torch.stack([d[j] for j in range(len(d))]).to(torch.float32) for d in pooled]

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
