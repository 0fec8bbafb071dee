"""Mocanu, Tapu, Zaharia 2023: cross-modal audio-video fusion with attention and an emotion metric.

Data flow (B clips, N snippets of k frames, N one-second spectrogram parts; section 3, eq. 1-11):

    video [B, N*k, 3, S, S] -> N snippets -> 3D ResNet (conv5) -> mean over time -> 1x1 projection
        -> D [B*N, s = h*w, m] -> VS: self-attention over the s positions (eq. 1-3)
        -> VC: self-attention over the m channels of D^T (eq. 4-5) -> spatial mean -> [B, N, m]
        -> VT: self-attention over the N snippets (eq. 6), output projection to m' -> D_VT [B, N, m']
    wave [B, L] -> N spectrogram images -> ResNet-18 (conv5) -> spatial mean -> [B, N, m_a]
        -> AT: self-attention over the N parts, output projection to m' -> D_AT [B, N, m']
    fusion (eq. 7-11): Corr = D_AT W D_VT^T, column-wise softmax, tanh(x + x~) residuals,
        D^Corr-AV = [D^Corr-VT; D^Corr-AT] [B, N, 2m'] -> flattened [B, N*2m'] (eq. 11; "mean": the
        mean over the N snippets, [B, 2m']) -> FC layers -> logits

The FC layers: ``head_layers`` hidden FC + ReLU + dropout layers, then the classifier. The full model
(Table 3, emotion constraint loss) has one hidden layer ("a set of fully connected layers", section 1
and 3.3); every row of Tables 1-2 and the triplet row of Table 3 "ends with one fully connected layer
having the number of neurons equal to the total number of emotion classes" (section 4.3): the
classifier alone (``head_layers=0``).

Every attention module is a switch of ``Mocanu2023Config`` (the ablations of Tables 1-3) and a module
that is switched off does not exist. The metric loss (eq. 13 or 16) is ``aux_loss``, on ``embedding``:
by default the FC layers' input (the flattened D^Corr-AV, L2-normalised), whose attention maps it is
meant to shape (section 3.3: "an emotion metric that enables to generate polarity-preserved attention
maps"). Its batches come from ``aver.train.metric_losses.metric_batch_sampler``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aver.train.backbones import (
    RESNET3D_LAYERS,
    feature_size,
    load_hara_checkpoint,
    load_state_dict_file,
    resnet3d,
    resnet18_2d,
)
from aver.train.metric_losses import emotion_constraint_loss, metric_batch_sampler, polarity_of, triplet_loss
from aver.train.spectral import SPECTRAL, spectrogram_images
from aver.train.system import INPUTS, System, presets_from, variants_from
from aver.train.systems import register_system

CHOICES: dict[str, tuple[str, ...]] = {
    "modality": ("av", "audio", "video"),
    # "emotion": CE + eq. 16 (the paper's model); "triplet": CE + eq. 13 (Tables 1-2); "softmax": CE only
    "loss": ("emotion", "triplet", "softmax"),
    "mining": ("hard", "all"),
    # eq. 8 read so that each attended row is a convex combination ("convex"), or as printed ("literal")
    "cross_weights": ("convex", "literal"),
    # eq. 11: D^Corr-AV is N x 2m' and is fed to the FC layers as is ("flatten"); "mean" over snippets
    "snippet_pool": ("flatten", "mean"),
    # classes without a related class (neutral; CREMA-D happy): eq. 13 ("triplet", section 3.4 for
    # neutral), or for the emotional ones eq. 16 with its always-empty terms ("none", aver 0.4)
    "no_related_loss": ("triplet", "none"),
    "embedding": ("fused", "hidden"),
    "audio_placement": ("uniform", "pad"),
    "audio_normalize": ("batch", "clip", "none"),
    "video_shortcut": ("A", "B"),
}
HEADS = {"av": "logits_fusion", "audio": "logits_audio", "video": "logits_video"}


@dataclass(frozen=True)
class Mocanu2023Config:
    """Architecture and loss of one Mocanu 2023 model; the defaults are the paper's (section 4.2).

    ``video_stage`` 5 takes conv5 as the text says (2048 channels, 7x7 at 224 px); 4 takes conv4
    (1024 channels, 14x14 at 224, 16x16 at 256 px), which is the size the paper states.
    """

    n_snippets: int = 6  # N
    snippet_frames: int = 16  # k
    image_size: int = 224
    video_depth: int = 101
    video_width: int = 64
    video_shortcut: str = "B"
    video_stage: int = 5
    d_model: int = 1024  # m: the backbone map is projected to m channels by a 1x1 conv
    n_heads: int = 8  # H
    spectral: str = "spectrogram256"  # section 4.2's spectrogram (aver.train.spectral)
    audio_part_seconds: float = 1.0
    audio_image_size: int = 224
    audio_placement: str = "uniform"
    # "clip": each spectrogram image standardised on its own, so a prediction does not depend on the
    # other clips of its batch; "batch" is the paper's literal "normalised per batch".
    audio_normalize: str = "clip"
    audio_width: int = 64
    d_fusion: int = 512  # m'
    cross_weights: str = "convex"
    cross_scale: bool = False  # divide Corr by sqrt(m') (eq. 7 has no scale)
    snippet_pool: str = "flatten"  # eq. 11 (see CHOICES)
    head_hidden: int = 512
    # hidden FC layers before the classifier: the full model 1 ("a set of fully connected layers");
    # Tables 1-2 and the triplet row of Table 3: 0, one FC layer (section 4.3; the variants set it)
    head_layers: int = 1
    dropout: float = 0.1
    attn_residual: bool = False  # x + attention(x) where widths allow (eq. 3 has no residual)
    embedding: str = "fused"  # metric-loss embedding: the FC layers' input (eq. 11), or the last hidden layer
    normalize_embedding: bool = True  # L2-normalise the embedding (FaceNet convention for margin 0.2)
    spatial: bool = True  # VS
    channel: bool = True  # VC
    temporal_video: bool = True  # VT
    temporal_audio: bool = True  # AT
    cross: bool = True  # A-V cross-attention fusion (else plain concatenation)
    modality: str = "av"
    loss: str = "emotion"
    mining: str = "hard"
    alpha: float = 0.2
    beta: float = 0.2
    no_related_loss: str = "triplet"  # see CHOICES
    loss_weight: float = 1.0
    video_weights: str | None = None  # Hara 3D-ResNet checkpoint (.pth / .safetensors); None = random
    audio_weights: str | None = None  # torchvision resnet18 state_dict (.pth / .safetensors); None = random
    allow_pickle: bool = False  # .pth weight files are pickles: opt in to read them

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"Mocanu2023Config.{f.name} must be an integer, got {value!r}")
            if f.type == "int" and value < (0 if f.name == "head_layers" else 1):
                raise ValueError(f"Mocanu2023Config.{f.name} must be positive, got {value}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"Mocanu2023Config.{name}={getattr(self, name)!r}; choose one of {choices}")
        if self.video_depth not in RESNET3D_LAYERS or self.video_stage not in (4, 5):
            raise ValueError(f"video_depth must be in {sorted(RESNET3D_LAYERS)} and video_stage 4 or 5")
        if self.spectral not in SPECTRAL:
            raise ValueError(f"spectral={self.spectral!r}; choose one of {sorted(SPECTRAL)}")
        if self.cross and self.modality != "av":
            raise ValueError(
                "cross-attention fuses two modalities: set cross=False with modality 'audio'/'video'"
            )
        if not 0.0 <= self.dropout < 1.0 or self.alpha <= 0 or self.beta <= 0 or self.loss_weight < 0:
            raise ValueError("need 0 <= dropout < 1, margins alpha, beta > 0 and loss_weight >= 0")
        if self.audio_part_seconds <= 0:
            raise ValueError(f"audio_part_seconds must be positive, got {self.audio_part_seconds}")

    @property
    def n_frames(self) -> int:
        return self.n_snippets * self.snippet_frames

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mocanu2023Config:
        """A saved ``model_config`` (``dataclasses.asdict``) rebuilt; unknown fields are an error (a
        checkpoint from another version). Fields a config saved before they existed lacks take the
        value that reproduces it (``LEGACY``), not today's default; saved fields keep their values."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown Mocanu2023Config fields {unknown}")
        data = dict(data)
        if data.get("spectral") in RENAMED_SPECTRAL and data["spectral"] not in SPECTRAL:
            data["spectral"] = RENAMED_SPECTRAL[data["spectral"]]  # the same preset, renamed
        return cls(**{**LEGACY, **data})


# Fields added after aver 0.4.0, with the values that reproduce a config saved before them.
LEGACY: dict[str, Any] = {"no_related_loss": "none"}
# Spectral presets saved under their former names.
RENAMED_SPECTRAL = {"mocanu2023": "spectrogram256"}


_ABLATION_DEFAULTS = dict(
    head_layers=1,  # the full model's "set of fully connected layers"
    spatial=True,
    channel=True,
    temporal_video=True,
    temporal_audio=True,
    cross=True,
    modality="av",
    loss="emotion",
)


def _variant(**changes: Any) -> dict[str, Any]:
    # Every variant sets all ablation switches, so applying one to another variant's config is the same
    # as applying it to the full model.
    return {**_ABLATION_DEFAULTS, **changes}


# Section 4.3: every row of Tables 1-2 (and so Table 3's triplet row, the same numbers) "ends with one
# fully connected layer having the number of neurons equal to the total number of emotion classes"
# and is trained with the triplet loss (eq. 13).
_TABLE = dict(loss="triplet", head_layers=0)

# Named ablations (field overrides).
VARIANTS: dict[str, dict[str, Any]] = {
    "full": _variant(),  # Table 3, last row: all attentions + emotion constraint loss (eq. 16)
    "triplet": _variant(**_TABLE),  # Tables 1-2 "AT + VS + VC + VT", Table 3 first row
    "softmax": _variant(loss="softmax"),  # Fig. 6a: cross-entropy only
    "no_spatial": _variant(spatial=False),
    "no_channel": _variant(channel=False),
    "no_temporal": _variant(temporal_video=False, temporal_audio=False),
    "no_temporal_video": _variant(temporal_video=False),
    "no_temporal_audio": _variant(temporal_audio=False),
    "no_cross": _variant(cross=False),  # concatenation of D_VT and D_AT
    "audio_only": _variant(modality="audio", cross=False),
    "video_only": _variant(modality="video", cross=False),
    # Tables 1-2, rows AT, VS, VS + VC, VS + VC + VT
    "table1_at": _variant(modality="audio", cross=False, **_TABLE),
    "table1_vs": _variant(modality="video", cross=False, channel=False, temporal_video=False, **_TABLE),
    "table1_vs_vc": _variant(modality="video", cross=False, temporal_video=False, **_TABLE),
    "table1_vs_vc_vt": _variant(modality="video", cross=False, **_TABLE),
}

# Architecture fields, and under "train" the optimisation (aver.train.systems reads it).
PRESETS: dict[str, dict[str, Any]] = {
    # Section 4: Adam, lr 1e-4, batch 16, early stop after 20 epochs without gain (most epochs: not
    # given; 100 here). Weight decay: not given (0).
    "paper": {
        "train": {
            "optimizer": "adam",
            "lr": 1e-4,
            "weight_decay": 0.0,
            "batch_size": 16,
            "epochs": 100,
            "patience": 20,
        }
    },
    # Trains on a CPU in seconds. 64 px (not 32) keeps a 2x2 conv5 map: over a single position the
    # spatial attention would be constant and its query/key would get no gradient.
    "tiny": dict(
        n_snippets=2,
        snippet_frames=4,
        image_size=64,
        video_depth=10,
        video_width=8,
        d_model=32,
        n_heads=2,
        audio_width=8,
        audio_image_size=32,
        d_fusion=16,
        head_hidden=16,
        # at toy scale (tens of clips) the metric loss at the paper's weight of 1 holds the classifier
        # back; the paper preset keeps 1
        loss_weight=0.1,
        train={
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "batch_size": 8,
            "epochs": 25,
            "patience": 8,
        },
    ),
}


def make_config(preset: str = "paper", variant: str = "full", **overrides: Any) -> Mocanu2023Config:
    """Preset, then variant, then explicit field overrides."""
    if preset not in PRESETS or variant not in VARIANTS:
        raise ValueError(
            f"preset in {sorted(PRESETS)}, variant in {sorted(VARIANTS)}; got {preset!r}, {variant!r}"
        )
    arch = {k: v for k, v in PRESETS[preset].items() if k != "train"}
    return replace(Mocanu2023Config(**arch), **{**VARIANTS[variant], **overrides})


class SelfAttention(nn.Module):
    """Multi-head self-attention as eq. 1-3: per-head W^Q, W^K, W^V (no bias), softmax(QK^T/sqrt(d_h))V,
    heads concatenated and projected by W_0 to ``d_out``.

    Per-head width d_h = ceil(d_in / H): the channel attention's tokens are s = h*w wide, which H does
    not divide at the standard map sizes (49 / 8); the paper has s / H.
    """

    def __init__(self, d_in: int, n_heads: int, d_out: int | None = None, residual: bool = False) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, -(-d_in // n_heads)
        inner, d_out = n_heads * self.d_head, d_out or d_in
        self.w_q = nn.Linear(d_in, inner, bias=False)
        self.w_k = nn.Linear(d_in, inner, bias=False)
        self.w_v = nn.Linear(d_in, inner, bias=False)
        self.w_o = nn.Linear(inner, d_out, bias=False)
        self.residual = residual and d_out == d_in

    def forward(self, x: Tensor) -> Tensor:
        """[B, L, d_in] -> [B, L, d_out]."""
        b, n, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.n_heads, self.d_head).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.w_q(x)), heads(self.w_k(x)), heads(self.w_v(x)))
        y = self.w_o(y.transpose(1, 2).reshape(b, n, -1))
        return x + y if self.residual else y


def _temporal(cfg: Mocanu2023Config, d_in: int, on: bool) -> nn.Module:
    """VT / AT (eq. 6, output width m'), or without it a plain projection to m' for the fusion."""
    if on:
        return SelfAttention(d_in, cfg.n_heads, cfg.d_fusion, cfg.attn_residual)
    return nn.Linear(d_in, cfg.d_fusion, bias=False)


class VideoBranch(nn.Module):
    """Snippets -> 3D ResNet -> VS -> VC -> spatial mean -> VT: ``[B, N*k, 3, S, S] -> [B, N, m']``."""

    def __init__(self, cfg: Mocanu2023Config) -> None:
        super().__init__()
        self.cfg = cfg
        stages = cfg.video_stage - 1  # conv2..conv5 are Hara's layer1..layer4
        self.trunk = resnet3d(cfg.video_depth, cfg.video_width, shortcut=cfg.video_shortcut, stages=stages)
        if cfg.video_weights:
            load_hara_checkpoint(self.trunk, cfg.video_weights, cfg.allow_pickle)
        self.n_positions = feature_size(cfg.image_size, stages) ** 2  # s = h*w
        self.proj = nn.Linear(self.trunk.out_channels, cfg.d_model)  # the 1x1 conv to m channels
        self.spatial = (
            SelfAttention(cfg.d_model, cfg.n_heads, None, cfg.attn_residual) if cfg.spatial else None
        )
        self.channel = (
            SelfAttention(self.n_positions, cfg.n_heads, None, cfg.attn_residual) if cfg.channel else None
        )
        self.temporal = _temporal(cfg, cfg.d_model, cfg.temporal_video)

    def forward(self, video: Tensor) -> Tensor:
        cfg = self.cfg
        b, t, c, h, w = video.shape
        if t != cfg.n_frames or h != cfg.image_size or w != cfg.image_size:
            raise ValueError(
                f"video is [B, {t}, {c}, {h}, {w}]; this model takes {cfg.n_snippets} snippets of "
                f"{cfg.snippet_frames} frames at {cfg.image_size} px (input_spec)"
            )
        # consecutive groups of k uniformly sampled frames are the N non-overlapping snippets
        x = video.reshape(b * cfg.n_snippets, cfg.snippet_frames, c, h, w).transpose(1, 2)
        x = self.trunk(x).mean(dim=2)  # the snippet descriptor has no time axis: mean over T'
        x = self.proj(x.flatten(2).transpose(1, 2))  # D_i [B*N, s, m]
        if self.spatial is not None:
            x = self.spatial(x)
        if self.channel is not None:
            x = self.channel(x.transpose(1, 2)).transpose(1, 2)  # attend over channels of D^T [m, s]
        x = x.mean(dim=1).view(b, cfg.n_snippets, cfg.d_model)  # spatial average pooling
        return self.temporal(x)


class AudioBranch(nn.Module):
    """N spectrogram images -> ResNet-18 -> spatial mean -> AT: ``wave [B, L] -> [B, N, m']``."""

    def __init__(self, cfg: Mocanu2023Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = resnet18_2d(in_chans=1, width=cfg.audio_width)
        if cfg.audio_weights:  # ImageNet weights: conv1 summed over RGB for the 1-channel spectrogram
            load_state_dict_file(self.trunk, cfg.audio_weights, cfg.allow_pickle)
        self.temporal = _temporal(cfg, self.trunk.out_channels, cfg.temporal_audio)

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        cfg = self.cfg
        img = spectrogram_images(
            wave.float(),
            lengths,
            n_parts=cfg.n_snippets,
            part_seconds=cfg.audio_part_seconds,
            size=cfg.audio_image_size,
            placement=cfg.audio_placement,
            normalize=cfg.audio_normalize,
            spectral=cfg.spectral,
        )  # [B, N, 1, S_a, S_a]
        x = self.trunk(img.flatten(0, 1)).mean(dim=(-2, -1))
        return self.temporal(x.view(wave.shape[0], cfg.n_snippets, -1))


class CrossModalFusion(nn.Module):
    """Eq. 7-11: ``Corr = D_AT W D_VT^T`` [N_a, N_v], column-wise softmax, residual tanh, [video; audio].

    "convex": column j of softmax(Corr) (over audio segments) weights the audio rows for video segment
    j, so each attended row is a convex combination (the cross-attention of Praveen et al. that this
    module follows); "literal": eq. 8 as printed, W^Audio D_AT without the transpose.
    """

    def __init__(self, d: int, weights: str = "convex", scale: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d, d))
        nn.init.xavier_uniform_(self.weight)  # section 4.2: Xavier, against tanh saturation
        self.convex, self.scale = weights == "convex", (1.0 / math.sqrt(d) if scale else 1.0)

    def weights(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        """The matrices eq. 8 left-multiplies D_AT and D_VT with, each ``[B, N, N]``."""
        corr = audio @ self.weight @ video.transpose(1, 2) * self.scale  # eq. 7, [B, N_a, N_v]
        w_audio = corr.softmax(dim=1)  # column-wise softmax of Corr
        w_video = corr.transpose(1, 2).softmax(dim=1)  # column-wise softmax of Corr^T
        if self.convex:
            return w_audio.transpose(1, 2), w_video.transpose(1, 2)
        return w_audio, w_video

    def forward(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, N, d]`` each -> (D^Corr-VT, D^Corr-AT), each ``[B, N, d]``."""
        w_audio, w_video = self.weights(audio, video)
        audio_att, video_att = w_audio @ audio, w_video @ video  # eq. 8
        return torch.tanh(video + video_att), torch.tanh(audio + audio_att)  # eq. 9-10


def _head(cfg: Mocanu2023Config, d_in: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    for _ in range(cfg.head_layers):
        layers += [nn.Linear(d_in, cfg.head_hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
        d_in = cfg.head_hidden
    return nn.Sequential(*layers), d_in


class Mocanu2023(nn.Module):
    """The full model or one ablation of it (``Mocanu2023Config``), per the end-to-end batch interface.

    Returns ``logits_fusion`` (or ``logits_audio`` / ``logits_video`` for one modality) and
    ``embedding`` (the metric-loss embedding, see ``Mocanu2023Config.embedding``).
    """

    def __init__(self, cfg: Mocanu2023Config, n_classes: int, class_names: list[str]) -> None:
        super().__init__()
        if len(class_names) != n_classes:
            raise ValueError(f"{n_classes} classes but {len(class_names)} class names")
        self.cfg = cfg
        self.input_spec = {"n_frames": cfg.n_frames, "image_size": cfg.image_size}
        # the trainer draws batches with positives, related and opposite classes for the metric loss
        self.metric_batches = cfg.loss != "softmax" and cfg.loss_weight > 0
        self.video = VideoBranch(cfg) if cfg.modality in ("av", "video") else None
        self.audio = AudioBranch(cfg) if cfg.modality in ("av", "audio") else None
        self.fusion = (
            CrossModalFusion(cfg.d_fusion, cfg.cross_weights, cfg.cross_scale) if cfg.cross else None
        )
        d = cfg.d_fusion * (2 if cfg.modality == "av" else 1)  # eq. 11: 2m' (one modality: m')
        d *= cfg.n_snippets if cfg.snippet_pool == "flatten" else 1  # N x 2m' flattened
        self.hidden, d = _head(cfg, d)
        self.classifier = nn.Linear(d, n_classes)
        if cfg.loss == "emotion":  # Mikel's-wheel polarity per class (eq. 16); fails early on unknown names
            self.register_buffer("polarity", polarity_of(list(class_names)), persistent=False)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        v = self.video(batch["video"]) if self.video is not None else None
        a = self.audio(batch["wave"], batch["wave_lengths"]) if self.audio is not None else None
        if v is not None and a is not None:
            if self.fusion is not None:
                v, a = self.fusion(a, v)
            x = torch.cat([v, a], dim=-1)  # eq. 11: [D^Corr-VT; D^Corr-AT]
        else:
            x = v if v is not None else a
        x = x.mean(dim=1) if cfg.snippet_pool == "mean" else x.flatten(1)  # eq. 11 -> the FC layers
        h = self.hidden(x)
        emb = x if cfg.embedding == "fused" else h
        if cfg.normalize_embedding:
            emb = F.normalize(emb, dim=-1)
        return {HEADS[cfg.modality]: self.classifier(h), "embedding": emb}

    def aux_loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor | None:
        """``loss_weight`` x the metric loss on the embedding: eq. 16 ("emotion"; eq. 13 for the classes
        without a related class, section 3.4), eq. 13 ("triplet"; Tables 1-2)."""
        cfg = self.cfg
        if cfg.loss == "softmax" or cfg.loss_weight == 0:
            return None
        emb, labels = out["embedding"], batch["labels"]
        if cfg.loss == "triplet":
            loss = triplet_loss(emb, labels, margin=cfg.alpha, mining=cfg.mining)
        else:
            loss = emotion_constraint_loss(
                emb, labels, self.polarity, cfg.alpha, cfg.beta, cfg.mining, no_related=cfg.no_related_loss
            )
        return cfg.loss_weight * loss


# -- the system contract (aver.train.system) -----------------------------------------------------
CITES = {
    "full": "Table 3, AT + VS + VC + VT with the emotion constraint loss",
    "triplet": "Tables 1-2, AT + VS + VC + VT (= Table 3, triplet loss)",
    "softmax": "ours: cross-entropy only (Fig. 6a compares it)",
    "no_spatial": "ours: the full model without VS",
    "no_channel": "ours: the full model without VC",
    "no_temporal": "ours: the full model without VT and AT",
    "no_temporal_video": "ours: the full model without VT",
    "no_temporal_audio": "ours: the full model without AT",
    "no_cross": "ours: concatenation instead of the cross-modal fusion (eq. 7-10)",
    "audio_only": "ours: the audio branch with the emotion loss",
    "video_only": "ours: the video branch with the emotion loss",
    "table1_at": "Tables 1-2, AT",
    "table1_vs": "Tables 1-2, VS",
    "table1_vs_vc": "Tables 1-2, VS + VC",
    "table1_vs_vc_vt": "Tables 1-2, VS + VC + VT",
}
log = logging.getLogger(__name__)


@register_system
class Mocanu2023System(System):
    """Mocanu et al. 2023 end to end on the cache's face crops and waveforms."""

    name = "mocanu2023"
    summary = "Mocanu et al. 2023: 3D ResNet + spectrogram ResNet-18, attention, cross-modal fusion, emotion metric loss"
    paper = "Mocanu, Tapu, Zaharia 2023 (Tables 1-3)"
    trains_on = INPUTS
    config_class = Mocanu2023Config
    presets = presets_from(PRESETS)
    variants = variants_from(VARIANTS, CITES)
    default_variant = "full"
    weight_fields = ("video_weights", "audio_weights")
    # augment stays False: the paper names no augmentation (--set augment=true turns it on)

    def model(self, config: Mocanu2023Config, names: list[str]) -> Mocanu2023:
        return Mocanu2023(config, len(names), names)

    def extra_loss(self, model: Mocanu2023, out, batch):
        """The metric loss (eq. 13 or 16) beside the cross-entropy (section 3.4)."""
        return model.aux_loss(out, batch)

    def batch_sampler(self, config: Mocanu2023Config, labels, names, batch_size: int, seed: int):
        """Batches in which every anchor has the partners its metric term needs (section 3.4)."""
        if config.loss == "softmax" or config.loss_weight == 0:
            return None
        sampler = metric_batch_sampler(labels, list(names), batch_size, seed)
        (log.info if sampler.guarantee else log.warning)("metric-loss batches: %s", sampler.summary)
        return sampler

    def init(self, config: Mocanu2023Config) -> str:
        parts = [
            f"{what} {Path(path).name}"
            for what, path in (("video", config.video_weights), ("audio", config.audio_weights))
            if path
        ]
        return "pretrained: " + ", ".join(parts) if parts else "random"

    def init_flags(self, paper_init: str) -> str:
        return (
            "--set model.video_weights=r3d101_KM_200ep.pth --set model.audio_weights=resnet18-f37072fd.pth "
            "--set model.allow_pickle=true"
        )
