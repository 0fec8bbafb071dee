"""Spectral audio features computed batched in torch, so end-to-end models build them on the GPU.

The cache stores the 16 kHz waveform; the end-to-end systems want a spectrogram (Mocanu 2023), MFCCs
(AVT-CA, MMER lineage) or a log-mel. Everything here is plain torch (``torch.stft``, a mel filterbank
and a DCT-II matrix built in torch) and matches librosa's definitions (see tests/test_spectral.py).

Padding and frame counts. Samples beyond ``lengths`` are set to 0 before the STFT, so a batched clip
sees exactly the zeros that librosa's ``pad_mode="constant"`` would give it alone: batched == per-clip.
With ``center=True`` (default, librosa's default) frame t is centred on sample t*hop and a clip of
``n`` samples has ``1 + n // hop`` valid frames; with ``center=False`` frames start at t*hop and a clip
has ``1 + max(n - n_fft, 0) // hop`` (a clip shorter than one window is zero-padded to one frame).
``features`` sets frames past a clip's count to 0 and returns the counts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

__all__ = [
    "SPECTRAL",
    "SpectralConfig",
    "dct_matrix",
    "features",
    "frame_counts",
    "mel_filterbank",
    "raw_features",
    "spectrogram_images",
    "with_options",
]


@dataclass(frozen=True)
class SpectralConfig:
    """One spectral front end; the defaults follow librosa where a paper is silent."""

    kind: str = "spectrogram"  # "spectrogram" | "logmel" | "mfcc"
    sample_rate: int = 16000
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    window: str = "hann"  # "hann" | "hamming" (periodic, as scipy.signal.get_window / librosa)
    center: bool = True
    power: float = 2.0  # |X|^power: 2 = power spectrum, 1 = magnitude
    n_freq: int | None = None  # spectrogram: keep the first n_freq of the 1 + n_fft // 2 bins
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None  # None = sample_rate / 2
    htk: bool = False  # mel scale: False = Slaney (librosa default), True = HTK
    mel_norm: str | None = "slaney"  # filter area normalisation, librosa's default
    n_mfcc: int = 13
    log: bool = True  # decibels: 10 * log10(max(x, amin)), librosa.power_to_db with ref=1
    amin: float = 1e-10
    top_db: float | None = None  # floor at (per-clip max over valid frames) - top_db, as power_to_db

    @property
    def win_length(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000.0))

    @property
    def n_features(self) -> int:
        """Rows F of the output."""
        if self.kind == "spectrogram":
            return self.n_freq or self.n_fft // 2 + 1
        return self.n_mels if self.kind == "logmel" else self.n_mfcc


SPECTRAL: dict[str, SpectralConfig] = {
    # Mocanu, Tapu, Zaharia 2023, section 4: "Fast Fourier Transform with 256 frequency components ...
    # image spectrograms using a Hamming sliding window of 32 ms with a step of 10 ms". 32 ms at 16 kHz
    # = 512 samples -> n_fft 512 gives 257 bins; we keep the first 256 (DC .. 7,969 Hz). The paper does
    # not give the log scale: we use dB with an 80 dB floor per clip (librosa.power_to_db's default).
    "spectrogram256": SpectralConfig(
        kind="spectrogram", win_ms=32.0, hop_ms=10.0, n_fft=512, window="hamming", n_freq=256, top_db=80.0
    ),
    # AVT-CA follows MMER (Chumachenko et al.), whose loader takes librosa.feature.mfcc(..., n_mfcc=10)
    # at 22.05 kHz with librosa's frame defaults. We keep the 10 MFCCs (DCT-II, ortho, of a dB Slaney
    # mel, top_db 80 as librosa.feature.mfcc) on our 16 kHz audio with 25 ms / 10 ms Hann frames and 40
    # mel bands (MMER's 128 bands leave empty filters at n_fft 512).
    "mfcc10": SpectralConfig(
        kind="mfcc", win_ms=25.0, hop_ms=10.0, n_fft=512, n_mels=40, n_mfcc=10, top_db=80.0
    ),
    # A general log-mel: 64 Slaney mel bands, 25 ms Hann window, 10 ms hop.
    "logmel": SpectralConfig(kind="logmel", win_ms=25.0, hop_ms=10.0, n_fft=512, n_mels=64),
}


def _resolve(cfg: SpectralConfig | str) -> SpectralConfig:
    if isinstance(cfg, str):
        if cfg not in SPECTRAL:
            raise KeyError(f"unknown spectral preset {cfg!r}; known: {sorted(SPECTRAL)}")
        cfg = SPECTRAL[cfg]
    if cfg.kind not in ("spectrogram", "logmel", "mfcc"):
        raise ValueError(f"unknown spectral kind {cfg.kind!r}")
    if cfg.win_length > cfg.n_fft:
        raise ValueError(f"window {cfg.win_length} samples exceeds n_fft {cfg.n_fft}")
    if cfg.n_freq is not None and not 0 < cfg.n_freq <= cfg.n_fft // 2 + 1:
        raise ValueError(f"n_freq must be in 1..{cfg.n_fft // 2 + 1}, got {cfg.n_freq}")
    if cfg.kind == "mfcc" and not cfg.log:
        raise ValueError("MFCCs are the DCT of a log-mel: kind='mfcc' needs log=True")
    return cfg


def _hz_to_mel(f: torch.Tensor, htk: bool) -> torch.Tensor:
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    # Slaney: linear below 1 kHz, logarithmic above (librosa.hz_to_mel with htk=False).
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_hz / f_sp + torch.log(torch.clamp(f, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(f >= min_log_hz, log, lin)


def _mel_to_hz(m: torch.Tensor, htk: bool) -> torch.Tensor:
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=32)
def _mel_cpu(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str | None):
    fft_hz = torch.linspace(0.0, sr / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = _hz_to_mel(torch.tensor([fmin, fmax], dtype=torch.float64), htk)
    edges = _mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), htk)
    fdiff = edges[1:] - edges[:-1]
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    if norm == "slaney":  # equal area per filter (librosa's default)
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    elif norm is not None:
        raise ValueError(f"mel_norm must be 'slaney' or None, got {norm!r}")
    return weights.float()


def mel_filterbank(cfg: SpectralConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n_mels, 1 + n_fft // 2] triangular filters, as librosa.filters.mel with the same options."""
    fmax = cfg.fmax if cfg.fmax is not None else cfg.sample_rate / 2.0
    w = _mel_cpu(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, fmax, cfg.htk, cfg.mel_norm)
    return w.to(device)


@functools.lru_cache(maxsize=32)
def _dct_cpu(n_out: int, n_in: int) -> torch.Tensor:
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    d = torch.cos(math.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    d[0] /= math.sqrt(2.0)  # orthonormal DCT-II (scipy norm="ortho", librosa.feature.mfcc's default)
    return d.float()


def dct_matrix(n_out: int, n_in: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n_out, n_in] orthonormal DCT-II: first n_out coefficients of a length-n_in signal."""
    return _dct_cpu(n_out, n_in).to(device)


def frame_counts(lengths: torch.Tensor, cfg: SpectralConfig | str) -> torch.Tensor:
    """Valid frames per clip of ``lengths`` samples (see the module docstring)."""
    cfg = _resolve(cfg)
    lengths = lengths.long().clamp(min=0)
    if cfg.center:
        return 1 + lengths // cfg.hop_length
    return 1 + (lengths - cfg.n_fft).clamp(min=0) // cfg.hop_length


def _prepare(wave: torch.Tensor, lengths: torch.Tensor, cfg: SpectralConfig, min_len: int) -> torch.Tensor:
    """Zero every sample past a clip's length; trim the batch to its longest clip (>= min_len)."""
    if wave.dim() != 2:
        raise ValueError(f"wave must be [B, L], got {tuple(wave.shape)}")
    wave = wave.float()
    lengths = lengths.to(wave.device).long().clamp(0, wave.shape[1])
    n = int(lengths.max()) if lengths.numel() else 0
    n = max(n, min_len, 1 if cfg.center else cfg.n_fft)
    if n > wave.shape[1]:
        wave = F.pad(wave, (0, n - wave.shape[1]))
    wave = wave[:, :n]
    keep = torch.arange(n, device=wave.device)[None, :] < lengths[:, None]
    return wave * keep


def _stft_power(wave: torch.Tensor, cfg: SpectralConfig) -> torch.Tensor:
    """[B, 1 + n_fft // 2, N] |STFT|^power, the window centred in n_fft as librosa does."""
    make = {"hann": torch.hann_window, "hamming": torch.hamming_window}.get(cfg.window)
    if make is None:
        raise ValueError(f"window must be 'hann' or 'hamming', got {cfg.window!r}")
    win = make(cfg.win_length, periodic=True, device=wave.device)
    spec = torch.stft(
        wave,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=win,
        center=cfg.center,
        pad_mode="constant",
        return_complex=True,
    )
    mag = spec.abs()
    return mag.square() if cfg.power == 2.0 else mag.pow(cfg.power)


def _to_db(x: torch.Tensor, counts: torch.Tensor, cfg: SpectralConfig) -> torch.Tensor:
    """power_to_db(ref=1); the top_db floor uses each clip's max over its valid frames only."""
    db = 10.0 * torch.log10(torch.clamp(x, min=cfg.amin))
    if cfg.top_db is not None:
        valid = torch.arange(db.shape[-1], device=db.device)[None, :] < counts[:, None]
        peak = db.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        db = torch.maximum(db, peak - cfg.top_db)
    return db


def raw_features(
    wave: torch.Tensor, lengths: torch.Tensor, cfg: SpectralConfig | str, min_len: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the zero-padded batch, frames past a clip's count left as computed (silence).

    Used where the padded region should look like silent audio (``spectrogram_images``); the batch
    is first extended with zeros to at least ``min_len`` samples.
    """
    cfg = _resolve(cfg)
    lengths = lengths.to(wave.device).long().clamp(0, wave.shape[-1])
    wave = _prepare(wave, lengths, cfg, min_len)
    counts = frame_counts(lengths, cfg)
    x = _stft_power(wave, cfg)
    if cfg.kind == "spectrogram":
        x = x[:, : cfg.n_features]
    else:
        x = torch.matmul(mel_filterbank(cfg, x.device), x)
    if cfg.log:
        x = _to_db(x, counts, cfg)
    if cfg.kind == "mfcc":
        x = torch.matmul(dct_matrix(cfg.n_mfcc, cfg.n_mels, x.device), x)
    return x, counts


def features(
    wave: torch.Tensor, lengths: torch.Tensor, cfg: SpectralConfig | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """wave [B, L], lengths [B] -> (features [B, F, N], valid frame counts [B]); padded frames are 0.

    N is the largest valid count in the batch (at least 1).
    """
    x, counts = raw_features(wave, lengths, cfg)
    n = int(counts.max()) if counts.numel() else 1
    x = x[..., :n]
    valid = torch.arange(x.shape[-1], device=x.device)[None, :] < counts[:, None]
    return x * valid[:, None, :], counts


def _part_starts(counts: torch.Tensor, n_parts: int, part: int, placement: str) -> torch.Tensor:
    """[B, n_parts] first frame of each part."""
    steps = torch.arange(n_parts, device=counts.device)
    if placement == "pad":  # consecutive parts from the start; past the clip they are silence
        return (steps * part)[None, :].expand(counts.shape[0], n_parts)
    if placement == "uniform":  # starts spread evenly from 0 to (count - part); overlap on short clips
        span = (counts - part).clamp(min=0).double()
        frac = steps.double() / max(n_parts - 1, 1)
        return torch.round(span[:, None] * frac[None, :]).long()
    raise ValueError(f"placement must be 'uniform' or 'pad', got {placement!r}")


def spectrogram_images(
    wave: torch.Tensor,
    lengths: torch.Tensor,
    n_parts: int = 6,
    part_seconds: float = 1.0,
    size: int = 224,
    placement: str = "uniform",
    normalize: str = "batch",
    spectral: SpectralConfig | str = "spectrogram256",
) -> torch.Tensor:
    """Mocanu 2023's audio input: [B, n_parts, 1, size, size] spectrogram images.

    The paper splits the spectrogram into N = 6 one-second parts, resizes each for ResNet-18 and
    normalises "each batch of elements ... to have zero mean and unit variance". It takes 6 s from
    ~3.7 s clips without saying how: ``placement`` chooses. "uniform" spreads the part starts evenly
    over the clip (parts overlap on clips shorter than n_parts parts; a clip shorter than one part gives
    n_parts copies of its one zero-padded part); "pad" takes consecutive parts from the start and pads
    with silence to n_parts parts. Audio past a clip's end is treated as silence (zero samples), so
    padded parts hold the clip's dB floor. Image rows run from the lowest frequency (row 0) upwards;
    columns are time. ``normalize``: "batch" (the paper), "clip"
    (per clip) or "none".
    """
    cfg = _resolve(spectral)
    part = int(round(part_seconds * 1000.0 / cfg.hop_ms))
    if part < 1 or n_parts < 1:
        raise ValueError("need n_parts >= 1 and part_seconds of at least one hop")
    need = (n_parts if placement == "pad" else 1) * part  # frames that must exist past the start
    x, counts = raw_features(wave, lengths, cfg, min_len=need * cfg.hop_length + cfg.n_fft)
    starts = _part_starts(counts, n_parts, part, placement)
    idx = starts[:, :, None] + torch.arange(part, device=x.device)[None, None, :]  # [B, n_parts, part]
    b = torch.arange(x.shape[0], device=x.device)[:, None, None]
    parts = x.transpose(1, 2)[b, idx].permute(0, 1, 3, 2)  # [B, n_parts, F, part]
    img = F.interpolate(parts.reshape(-1, 1, *parts.shape[2:]), size=(size, size), mode="bilinear")
    img = img.reshape(x.shape[0], n_parts, 1, size, size)
    return _normalize(img, normalize)


def _normalize(img: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return img
    dims = {"batch": tuple(range(img.dim())), "clip": tuple(range(1, img.dim()))}.get(how)
    if dims is None:
        raise ValueError(f"normalize must be 'batch', 'clip' or 'none', got {how!r}")
    mean = img.mean(dim=dims, keepdim=True)
    std = img.std(dim=dims, keepdim=True, unbiased=False).clamp(min=1e-5)
    return (img - mean) / std


def with_options(cfg: SpectralConfig | str, **changes: object) -> SpectralConfig:
    """A preset with some fields changed, e.g. ``with_options("mfcc10", n_mels=128)``."""
    return replace(_resolve(cfg), **changes)
