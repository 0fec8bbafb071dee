"""AVT-CA: audio-video transformer fusion with cross attention (Dhanith et al., section 3, Alg. 1-10).

End to end from face crops and the waveform. Data flow (B clips, T frames, N MFCC frames):

    video [B, T, 3, S, S] --per frame (``avtca_video``; Alg. 10's V_conv .. V_iR): conv block, channel x
        spatial attention + local feature extractor, two inverted-residual blocks, pool over H, W
        --> [B, T, C] --temporal Conv1d-BN-ReLU x2 (Alg. 10 "convBlock(convBlock(V_iR))")--> V [B, T, dv1]
    wave [B, L] --spectral preset "mfcc10" (10 MFCCs)--> [B, 10, N] --Conv1d-BN-ReLU-MaxPool x2--> A [B, N', da1]
    transformer fusion (Alg. 6): A += TB(key V, query A); V += TB(key A, query V)
    stage 2: audio Conv1d-BN-ReLU-MaxPool x2, video Conv1d-BN-ReLU x2 (no pooling)
    Alg. 8 pair (single head): A += Att(key V, query A); V += Att(key A, query V)
    late multi-head attention (Alg. 9), 4 heads, per stream
    masked max-pool over time -> concatenate -> linear classifier -> logits

Audio clips differ in length: every audio block zeroes its padded frames, every BatchNorm over
audio frames takes statistics of valid frames only, attention masks padded audio keys and
max-pooling skips padded frames, so a clip's logits do not depend on its batch neighbours
(``tests/test_avtca.py``).

Corrections of the paper's listings (its text says what they mean): attention multiplies the
softmax weights by the values (Alg. 8 returns ``dropout(attn)`` without ``@ v``); the model ends in
a linear classifier that returns logits (Alg. 10 applies softmax to the pooled features, which have
no class dimension; cross-entropy in the trainer applies log-softmax); MLP's GELU acts on its first
linear layer (Alg. 7 writes ``GELU(V_input)``); Alg. 6's residual adds the attention after its
dropout (MMER's block; the same in evaluation).

Readings where the listings leave a choice (each a config field; default first):

- ``attention_gate``: the attention maps gate the conv block's features, ``x * sigmoid(c * s)``
  (EfficientFace), or Alg. 10 literally, ``V_att = c * s`` ("product").
- ``local_stride``: ``V_att`` has the conv block's resolution (56x56 at 224 px, the map Alg. 4
  cuts into 28x28 quadrants) while EfficientFace's extractor halves it; 1 keeps the extractor at
  that resolution and width so ``V_att + V_LFR`` adds as listed; 2 halves it and max-pools ``V_att``.
- ``ir_channels``/``ir_strides``: Alg. 10's two inverted-residual blocks are EfficientFace's two
  down-sampling units (stride 2, 116 then 232 channels: the first unit of its stages 2 and 3);
  Alg. 5 lists exactly that unit (both branches on the whole input, concatenated). A stride-1
  block is ShuffleNet's basic unit (half the channels pass: the text's "shortcut connections").
- ``frame_pool``: the map becomes one vector per frame by its mean over H, W (EfficientFace, MMER)
  or "max"; Alg. 10 permutes ``V_conv`` as ``[B, C, T]``, so one vector per frame is implied.
- ``video_stem``: Alg. 1's video block is a 3x3 conv (stride 2) and max pooling (3, stride 2):
  "conv"; "conv_bn_relu" is EfficientFace's stem.
- ``block_norm``: Alg. 6's BatchNorm (over valid rows: ``MaskedBatchNorm``), or MMER's LayerNorm;
  ``post_mlp_norm``: Alg. 6's ``attn + batchNormalization(attnMLP)`` (on), or MMER's block (off).
- ``heads_pair``: Alg. 8 (the pair after stage 2) is single-head; ``heads_cross`` is Alg. 9's.
- ``frame_encoder="efficientface"``: the full EfficientFace instead (IR stages 4/8/4, attention
  after stage 2, 1024-channel conv5), aver's encoder before the Alg. 10 branch.

``LEGACY`` holds the values of the fields added since, that rebuild a model saved before them;
``AvtcaConfig.from_dict`` fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from aver.train.models.avtca_video import FRAME_ENCODERS, FRAME_POOLS, VIDEO_STEMS, frame_encoder
from aver.train.models.conformer import MaskedBatchNorm, padding_mask, zero_padding
from aver.train.system import INPUTS, System, presets_from, variants_from
from aver.train.systems import register_system

# fusion_blocks -> (transformer fusion after stage 1, cross attention after stage 2)
FUSION_BLOCKS: dict[str, tuple[bool, bool]] = {
    "both": (True, True),
    "transformer": (True, False),
    "cross": (False, True),
    "none": (False, False),
}
MODALITIES = ("av", "audio", "video")
BLOCK_NORMS = ("batch", "layer")  # transformer-fusion norms: Alg. 6's BatchNorm, or MMER's LayerNorm
LATE_ATTENTION = ("self", "cross", "none")  # Alg. 9's keys/values: own stream (Alg. 10), other stream, off
MERGES = ("concat", "sum")  # Alg. 10 concatenates the pooled streams; the text says "combined by addition"
ATTENTION_GATES = ("sigmoid", "product")  # EfficientFace x*sigmoid(c*s), or Alg. 10 literally: c*s
LOCAL_STRIDES = (1, 2)  # local feature extractor at V_conv's resolution, or halving it (EfficientFace)
_CHOICES = {
    "fusion_blocks": FUSION_BLOCKS,
    "modality": MODALITIES,
    "block_norm": BLOCK_NORMS,
    "late_attention": LATE_ATTENTION,
    "merge": MERGES,
    "attention_gate": ATTENTION_GATES,
    "frame_encoder": FRAME_ENCODERS,
    "video_stem": VIDEO_STEMS,
    "frame_pool": FRAME_POOLS,
    "local_stride": LOCAL_STRIDES,
    "post_mlp_norm": (True, False),
}
_TUPLES = (
    "frame_channels",
    "stage_repeats",
    "ir_channels",
    "ir_strides",
    "video_stage1",
    "video_stage2",
    "audio_stage1",
    "audio_stage2",
)

# Fields added after aver 0.4, with the values a model saved before them was built with (its saved
# fields keep their values: an old block_norm="layer" still builds LayerNorm). heads_pair None:
# Alg. 8 took heads_cross heads.
LEGACY: dict[str, Any] = {
    "frame_encoder": "efficientface",
    "video_stem": "conv_bn_relu",
    "local_stride": 2,
    "ir_channels": (116, 232),
    "ir_strides": (2, 2),
    "frame_pool": "mean",
    "post_mlp_norm": False,
    "heads_pair": None,
}
# Spectral presets saved under their former names (aver.train.spectral).
RENAMED_SPECTRAL = {"avtca": "mfcc10"}


@dataclass(frozen=True)
class AvtcaConfig:
    """Architecture of one AVT-CA model; defaults are the paper's (MMER sizes where it is silent).

    ``frame_channels[0]``: the video conv block's width (EfficientFace's 29). ``ir_channels``,
    ``ir_strides``: Alg. 10's inverted-residual blocks (a stride-1 block keeps its width).
    ``frame_encoder="efficientface"`` only: ``frame_channels`` are the widths of its conv block, IR
    stages 2-4 and final 1x1 conv (29/116/232/464/1024), ``stage_repeats`` its IR units per stage.
    ``video_stage*``/``audio_stage*``: output widths of the temporal conv blocks before and after the
    transformer fusion (MMER: video 64,64 | 128,128; audio 64,128 | 256,128). ``spectral``: the
    ``aver.train.spectral`` preset whose rows feed the audio branch (10 MFCCs). The readings each
    other field picks are in the module docstring.
    """

    n_frames: int = 15
    image_size: int = 224
    spectral: str = "mfcc10"
    frame_encoder: str = "alg10"
    video_stem: str = "conv"
    frame_channels: tuple[int, ...] = (29, 116, 232, 464, 1024)
    stage_repeats: tuple[int, ...] = (4, 8, 4)
    ir_channels: tuple[int, ...] = (116, 232)
    ir_strides: tuple[int, ...] = (2, 2)
    local_stride: int = 1
    frame_pool: str = "mean"
    attention_reduction: int = 16  # channel/spatial attention bottleneck ratio (EfficientFace)
    attention_gate: str = "sigmoid"
    video_stage1: tuple[int, ...] = (64, 64)
    video_stage2: tuple[int, ...] = (128, 128)
    audio_stage1: tuple[int, ...] = (64, 128)
    audio_stage2: tuple[int, ...] = (256, 128)
    audio_pool_stride: int = 1  # MMER's MaxPool1d(2, 1); 2 halves the audio rate at every block
    heads_transformer: int = 4  # Alg. 6 (paper: 4 heads; ablation IT-1 uses 1)
    heads_pair: int | None = 1  # Alg. 8, single-head; None: heads_cross (aver <= 0.4)
    heads_cross: int = 4  # Alg. 9 (paper: 4 heads; ablation CT-1 uses 1)
    mlp_ratio: float = 4.0  # transformer-fusion MLP width / its input width (MMER)
    dropout: float = 0.1  # paper: dropout in Alg. 6-8, rate not given
    block_norm: str = "batch"
    post_mlp_norm: bool = True
    late_attention: str = "self"
    merge: str = "concat"
    fusion_blocks: str = "both"
    modality: str = "av"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AvtcaConfig:
        """A saved ``model_config`` (``dataclasses.asdict``) -> its config; unknown keys are an error
        (a checkpoint from another version). Fields an older aver did not save take ``LEGACY``."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown AvtcaConfig fields {sorted(unknown)}")
        data = dict(data)
        if data.get("spectral") in RENAMED_SPECTRAL:
            data["spectral"] = RENAMED_SPECTRAL[data["spectral"]]  # the same preset, renamed
        return cls(**{**LEGACY, **data})

    @property
    def pair_heads(self) -> int:
        """Heads of Alg. 8's attention pair."""
        return self.heads_cross if self.heads_pair is None else self.heads_pair

    def __post_init__(self) -> None:
        for name in _TUPLES:  # JSON round trips turn tuples into lists
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"AvtcaConfig.{name}={getattr(self, name)!r}; choose one of {list(choices)}")
        self._check_frames()
        stages = (self.video_stage1, self.video_stage2, self.audio_stage1, self.audio_stage2)
        if not all(stages) or min(min(s) for s in stages) < 1 or self.n_frames < 1:
            raise ValueError("every temporal stage needs at least one positive width; n_frames >= 1")
        if not 0.0 <= self.dropout < 1.0 or self.audio_pool_stride < 1 or self.attention_reduction < 1:
            raise ValueError("dropout must be in [0, 1); audio_pool_stride, attention_reduction >= 1")
        self._check_fusion()

    def _check_frames(self) -> None:
        # the local feature extractor's quadrants of the S/4 map, halved where it has stride 2
        multiple = 8 if self.frame_encoder == "alg10" and self.local_stride == 1 else 16
        if self.image_size < 16 or self.image_size % multiple:
            raise ValueError(f"image_size must be a multiple of {multiple} (>= 16), got {self.image_size}")
        if len(self.frame_channels) != 5 or len(self.stage_repeats) != 3 or min(self.stage_repeats) < 1:
            raise ValueError("frame_channels needs 5 widths and stage_repeats 3 positive counts")
        if any(c % 2 for c in (*self.frame_channels[1:4], *self.ir_channels)):
            raise ValueError(
                f"IR widths must be even (two branches), got {self.frame_channels}, {self.ir_channels}"
            )
        if not self.ir_channels or len(self.ir_strides) != len(self.ir_channels):
            raise ValueError(f"ir_strides needs one stride per ir_channels width, got {self.ir_strides}")
        widths = (self.frame_channels[0], *self.ir_channels)
        for cin, cout, stride in zip(widths[:-1], widths[1:], self.ir_strides, strict=True):
            if stride not in (1, 2) or (stride == 1 and cin != cout) or cout < 2:
                raise ValueError(
                    f"IR block {cin}->{cout} at stride {stride}: stride 1 or 2; stride 1 keeps the width"
                )

    def _check_fusion(self) -> None:
        transformer, cross = FUSION_BLOCKS[self.fusion_blocks]
        if self.modality != "av" and (transformer or cross):
            raise ValueError(f"modality={self.modality!r} has nothing to fuse: it needs fusion_blocks='none'")
        if self.heads_pair is not None and self.heads_pair < 1:
            raise ValueError(f"heads_pair must be >= 1 (or None: heads_cross), got {self.heads_pair}")
        da1, dv1, da2, dv2 = (
            s[-1] for s in (self.audio_stage1, self.video_stage1, self.audio_stage2, self.video_stage2)
        )
        need = [(self.heads_transformer, (da1, dv1))] if transformer else []
        if cross:
            need.append((self.pair_heads, (da2, dv2)))
            if self.late_attention != "none":
                need.append((self.heads_cross, (da2, dv2)))
        for heads, dims in need:
            if heads < 1 or any(d % heads for d in dims):
                raise ValueError(f"attention widths {dims} must be positive multiples of {heads} heads")
        if self.modality == "av" and self.merge == "sum" and da2 != dv2:
            raise ValueError(f"merge='sum' needs equal final widths, got audio {da2}, video {dv2}")


# Named ablations: each sets every switch it is about, so it applies to any preset.
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"fusion_blocks": "both", "modality": "av"},
    "no_transformer_fusion": {"fusion_blocks": "cross", "modality": "av"},
    "no_cross_attention": {"fusion_blocks": "transformer", "modality": "av"},
    "no_fusion": {"fusion_blocks": "none", "modality": "av"},
    "audio_only": {"fusion_blocks": "none", "modality": "audio"},
    "video_only": {"fusion_blocks": "none", "modality": "video"},
    # Tables 8-9 (section 5.3): "only intermediate transformer fusion" (IT: Alg. 6, no Alg. 8/9) or
    # "only cross attention" (CT: Alg. 8's single-head pair and Alg. 9, no Alg. 6), 1 or 4 heads.
    "it_1": {"fusion_blocks": "transformer", "modality": "av", "heads_transformer": 1},  # IT-1
    "it_4": {"fusion_blocks": "transformer", "modality": "av", "heads_transformer": 4},  # IT-4
    "ct_1": {"fusion_blocks": "cross", "modality": "av", "heads_pair": 1, "heads_cross": 1},  # CT-1
    "ct_4": {"fusion_blocks": "cross", "modality": "av", "heads_pair": 1, "heads_cross": 4},  # CT-4
}

PRESETS: dict[str, dict[str, Any]] = {
    # Section 4: Adam, lr 0.01, weight decay 0.001, batch 8, 128 epochs; MMER: 15 frames at 224 px.
    "paper": {
        "n_frames": 15,
        "image_size": 224,
        "train": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.001, "batch_size": 8, "epochs": 128},
    },
    # Trains on a CPU in seconds per epoch (tests, smoke runs); lr 1e-3: the paper's 0.01 diverges
    # at toy scale.
    "tiny": {
        "n_frames": 4,
        "image_size": 32,
        "frame_channels": (8, 16, 16, 16, 32),
        "stage_repeats": (1, 1, 1),  # frame_encoder="efficientface" only
        "ir_channels": (16, 16),
        "attention_reduction": 4,
        "video_stage1": (16, 16),
        "video_stage2": (16, 16),
        "audio_stage1": (16, 16),
        "audio_stage2": (16, 16),
        "train": {
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 0.001,
            "batch_size": 8,
            "epochs": 25,
            "patience": 8,
        },
    },
}


def avtca_config(preset: str = "paper", variant: str = "full", **overrides: Any) -> AvtcaConfig:
    """The config of ``variant`` on ``preset`` (its ``"train"`` settings left out), then ``overrides``."""
    for name, table in (("preset", PRESETS), ("variant", VARIANTS)):
        key = preset if name == "preset" else variant
        if key not in table:
            raise ValueError(f"unknown AVT-CA {name} {key!r}; choose one of {list(table)}")
    arch = {k: v for k, v in PRESETS[preset].items() if k != "train"}
    return AvtcaConfig(**{**arch, **VARIANTS[variant], **overrides})


def spectral_rows(name: str) -> int:
    """Feature rows F of spectral preset ``name`` (the audio branch's input channels)."""
    from aver.train.spectral import SPECTRAL

    if name not in SPECTRAL:
        raise ValueError(f"unknown spectral preset {name!r}; choose one of {list(SPECTRAL)}")
    return int(SPECTRAL[name].n_features)


# ---------------------------------------------------------------- video temporal blocks


def _video_blocks(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    """MMER's video ``conv1d_block``: Conv1d(3, 'same')-BN-ReLU, no pooling (T is fixed)."""
    layers: list[nn.Module] = []
    for cout in widths:
        layers += [nn.Conv1d(cin, cout, 3, padding=1), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- audio blocks


class AudioConvBlock(nn.Module):
    """Alg. 1's audio conv block (MMER ``conv1d_block_audio``): Conv1d(3, valid) -> BatchNorm over valid
    frames -> ReLU -> MaxPool1d(2, ``pool_stride``); padded frames stay zero on output."""

    def __init__(self, cin: int, cout: int, pool_stride: int) -> None:
        super().__init__()
        self.conv, self.bn, self.stride = nn.Conv1d(cin, cout, 3), MaskedBatchNorm(cout), pool_stride

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, C, N]`` (zero at padding), ``lengths`` ``[B]`` -> (``[B, C', N']``, ``[B]``)."""
        if x.shape[-1] < 4:  # room for one conv + pool output; the extra frames are padding
            x = F.pad(x, (0, 4 - x.shape[-1]))
        x = self.conv(x)  # valid: output i sees inputs i..i+2, so only the first n - 2 are clean
        lengths = (lengths - 2).clamp(min=1)  # a clip shorter than the kernel keeps one (zero-padded) frame
        mask = padding_mask(lengths, x.shape[-1])
        x = zero_padding(F.relu(self.bn(x.transpose(1, 2), mask)), mask).transpose(1, 2)
        x = F.max_pool1d(x, 2, self.stride)
        lengths = ((lengths - 2).div(self.stride, rounding_mode="floor") + 1).clamp(min=1)
        return x.masked_fill(padding_mask(lengths, x.shape[-1])[:, None, :], 0.0), lengths


# ---------------------------------------------------------------- attention


class _SeqNorm(nn.Module):
    """LayerNorm (MMER) or BatchNorm over valid rows (Alg. 6's batchNorm, padding-safe) on ``[B, N, D]``."""

    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if kind == "layer" else MaskedBatchNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.norm, nn.LayerNorm):
            return self.norm(x)
        if mask is None:
            mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.norm(x, mask)


class Attention(nn.Module):
    """Multi-head attention between two streams of different widths (MMER ``Attention``; Alg. 8-9).

    ``q = W_q x_q``, ``k, v = W_kv x_k``; ``softmax(q k^T / sqrt(d_head)) v`` per head (the paper's
    Alg. 8 omits ``@ v``), heads concatenated, then a linear layer and dropout.
    """

    def __init__(self, dim_k: int, dim_q: int, dim_out: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim_q, dim_out, bias=False)
        self.kv = nn.Linear(dim_k, 2 * dim_out, bias=False)
        self.proj = nn.Sequential(nn.Linear(dim_out, dim_out), nn.Dropout(dropout))

    def forward(self, x_k: torch.Tensor, x_q: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """``x_k`` ``[B, Nk, Dk]``, ``x_q`` ``[B, Nq, Dq]``, ``key_mask`` bool ``[B, Nk]`` (True = padding)
        -> ``[B, Nq, dim_out]``."""
        b, nq, nk = x_q.shape[0], x_q.shape[1], x_k.shape[1]
        q = self.q(x_q).view(b, nq, self.heads, -1).transpose(1, 2)
        k, v = self.kv(x_k).view(b, nk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        allowed = None if key_mask is None else ~key_mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, nq, -1))


class TransformerBlock(nn.Module):
    """Alg. 6: norm both inputs, attention (query stream attends to key stream), dropout, norm, a
    GELU MLP (Alg. 7), its own norm (``post_mlp_norm``), added to the attention output. Norms are
    BatchNorm over valid rows (Alg. 6) or LayerNorm (MMER's ``AttentionBlock``): ``block_norm``."""

    def __init__(self, dim_k: int, dim_q: int, heads: int, cfg: AvtcaConfig) -> None:
        super().__init__()
        self.norm_k, self.norm_q = _SeqNorm(cfg.block_norm, dim_k), _SeqNorm(cfg.block_norm, dim_q)
        self.attn = Attention(dim_k, dim_q, dim_q, heads, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm2 = _SeqNorm(cfg.block_norm, dim_q)
        hidden = int(dim_q * cfg.mlp_ratio)
        self.mlp = nn.Sequential(  # Alg. 7: FC -> GELU -> dropout -> FC -> dropout
            nn.Linear(dim_q, hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(hidden, dim_q),
            nn.Dropout(cfg.dropout),
        )
        if cfg.post_mlp_norm:
            self.norm3 = _SeqNorm(cfg.block_norm, dim_q)

    def forward(
        self,
        x_k: torch.Tensor,
        x_q: torch.Tensor,
        key_mask: torch.Tensor | None,
        query_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """-> ``[B, Nq, Dq]``, to be added to the query stream (Alg. 10: ``h_AV + A_conv``)."""
        # Alg. 6: A_norm, V_norm = batchNormalization; attn = selfAttention(A_norm, V_norm); dropout
        x = self.drop(self.attn(self.norm_k(x_k, key_mask), self.norm_q(x_q, query_mask), key_mask))
        y = self.mlp(self.norm2(x, query_mask))  # attnnorm = batchNorm(attnd); attnMLP = MLP(attnnorm)
        if hasattr(self, "norm3"):  # output = attn + batchNormalization(attnMLP)
            y = self.norm3(y, query_mask)
        return x + y


# ---------------------------------------------------------------- the model


def _masked_max(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Max over time of ``[B, N, D]``, skipping rows where ``mask`` is True."""
    return (x if mask is None else x.masked_fill(mask[..., None], float("-inf"))).amax(dim=1)


class Avtca(nn.Module):
    """AVT-CA on the shared end-to-end batch (``video``, ``wave``, ``wave_lengths``).

    Returns ``logits_fusion`` (``modality="av"``), ``logits_audio`` or ``logits_video`` (unimodal
    ablations), each ``[B, n_classes]``, and ``embedding`` ``[B, E]`` (the merged pooled features).
    Only the blocks a config uses are built, so every parameter receives a gradient.
    """

    def __init__(self, cfg: AvtcaConfig, n_classes: int, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg, self.n_classes, self.class_names = cfg, n_classes, list(class_names or [])
        self.input_spec = {"n_frames": cfg.n_frames, "image_size": cfg.image_size}
        use_a, use_v = cfg.modality in ("av", "audio"), cfg.modality in ("av", "video")
        if use_a:
            widths = (spectral_rows(cfg.spectral), *cfg.audio_stage1, *cfg.audio_stage2)
            blocks = [
                AudioConvBlock(i, o, cfg.audio_pool_stride)
                for i, o in zip(widths[:-1], widths[1:], strict=True)
            ]
            self.audio1 = nn.ModuleList(blocks[: len(cfg.audio_stage1)])
            self.audio2 = nn.ModuleList(blocks[len(cfg.audio_stage1) :])
        if use_v:
            self.frames = frame_encoder(cfg)  # Alg. 10: V_conv ... V_iR, per frame (avtca_video)
            self.video1 = _video_blocks(
                self.frames.out_dim, cfg.video_stage1
            )  # V_conv = convBlock(convBlock(V_iR))
            self.video2 = _video_blocks(cfg.video_stage1[-1], cfg.video_stage2)
        self._build_fusion(cfg)
        da, dv = cfg.audio_stage2[-1], cfg.video_stage2[-1]
        d_merged = {"audio": da, "video": dv}.get(cfg.modality, da if cfg.merge == "sum" else da + dv)
        self.classifier = nn.Linear(d_merged, n_classes)  # the paper's softmax needs one: see the docstring

    def _build_fusion(self, cfg: AvtcaConfig) -> None:
        transformer, cross = FUSION_BLOCKS[cfg.fusion_blocks]
        da1, dv1, da2, dv2 = (
            cfg.audio_stage1[-1],
            cfg.video_stage1[-1],
            cfg.audio_stage2[-1],
            cfg.video_stage2[-1],
        )
        if transformer:  # h_AV = TB(key V, query A) joins audio; h_VA = TB(key A, query V) joins video
            self.fuse_a = TransformerBlock(dv1, da1, cfg.heads_transformer, cfg)
            self.fuse_v = TransformerBlock(da1, dv1, cfg.heads_transformer, cfg)
        if cross:  # Alg. 8 pair (Alg. 10: h_AV, h_VA = selfAttention), each added back to its query stream
            self.cross_a = Attention(dv2, da2, da2, cfg.pair_heads, cfg.dropout)
            self.cross_v = Attention(da2, dv2, dv2, cfg.pair_heads, cfg.dropout)
            if cfg.late_attention != "none":  # Alg. 9 multi-head attention on each stream (V_LA, A_LA)
                other = cfg.late_attention == "cross"
                self.late_a = Attention(dv2 if other else da2, da2, da2, cfg.heads_cross, cfg.dropout)
                self.late_v = Attention(da2 if other else dv2, dv2, dv2, cfg.heads_cross, cfg.dropout)

    def _audio_input(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from aver.train.spectral import features

        wave, lengths = batch["wave"], batch["wave_lengths"].to(batch["wave"].device)
        x, n = features(wave, lengths, self.cfg.spectral)  # [B, F, N], zero past n
        return x, n.to(x.device).long().clamp(min=1)

    @staticmethod
    def _run_audio(
        blocks: nn.ModuleList, x: torch.Tensor, n: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for block in blocks:
            x, n = block(x, n)
        return x, n

    def _stage1(self, batch: dict[str, torch.Tensor]) -> tuple[Any, Any, Any]:
        """-> (audio ``[B, C, N']`` or None, its lengths or None, video ``[B, C, T]`` or None)."""
        a = n = v = None
        if self.cfg.modality != "video":
            a, n = self._run_audio(self.audio1, *self._audio_input(batch))
        if self.cfg.modality != "audio":
            video = batch["video"]
            b, t = video.shape[:2]
            v = self.frames(video.flatten(0, 1)).view(b, t, -1).transpose(1, 2)  # [B, C5, T]
            v = self.video1(v)
        return a, n, v

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, n, v = self._stage1(batch)
        mask = None if a is None else padding_mask(n, a.shape[-1])
        if hasattr(self, "fuse_a"):  # Alg. 10: h_AV, h_VA = transformerBlock; X = h + conv (sequence-first)
            sa, sv = a.transpose(1, 2), v.transpose(1, 2)
            ha, hv = self.fuse_a(sv, sa, None, mask), self.fuse_v(sa, sv, mask, None)
            a, v = zero_padding(sa + ha, mask).transpose(1, 2), (sv + hv).transpose(1, 2)
        if a is not None:
            a, n = self._run_audio(self.audio2, a, n)  # X_audio = convBlock(convBlock(X_audio))
            a, mask = a.transpose(1, 2), padding_mask(n, a.shape[-1])  # [B, N'', D]
        if v is not None:
            v = self.video2(v).transpose(1, 2)  # X_visual = convBlock(convBlock(X_visual)): [B, T, D]
        if hasattr(self, "cross_a"):  # X'_audio = X_audio + h_AV; X'_visual = X_visual + h_VA
            a, v = zero_padding(a + self.cross_a(v, a, None), mask), v + self.cross_v(a, v, mask)
        if hasattr(self, "late_a"):
            other = self.cfg.late_attention == "cross"
            a, v = (
                zero_padding(self.late_a(v if other else a, a, None if other else mask), mask),
                self.late_v(a if other else v, v, mask if other else None),
            )
        return self._head(a, mask, v)

    def _head(self, a: torch.Tensor | None, mask: torch.Tensor | None, v: torch.Tensor | None) -> dict:
        pooled = [_masked_max(a, mask)] if a is not None else []
        pooled += [v.amax(dim=1)] if v is not None else []
        emb = pooled[0] + pooled[1] if self.cfg.merge == "sum" and len(pooled) == 2 else torch.cat(pooled, -1)
        key = {"av": "logits_fusion", "audio": "logits_audio", "video": "logits_video"}[self.cfg.modality]
        return {key: self.classifier(emb), "embedding": emb}


# -- the system contract (aver.train.system) -----------------------------------------------------
CITES = {
    "full": "Table 5 / Table 6 / Table 9 AVT-CA (Proposed)",
    "no_transformer_fusion": "ours: Alg. 10 without the transformer fusion (Alg. 6)",
    "no_cross_attention": "ours: Alg. 10 without Alg. 8 and 9",
    "no_fusion": "ours: no fusion block, pooled streams concatenated",
    "audio_only": "ours: the audio branch alone",
    "video_only": "ours: the video branch alone",
    "it_1": "Tables 8-9, IT-1",
    "it_4": "Tables 8-9, IT-4",
    "ct_1": "Tables 8-9, CT-1",
    "ct_4": "Tables 8-9, CT-4",
}


@register_system
class AvtcaSystem(System):
    """AVT-CA end to end on the cache's face crops and waveforms."""

    name = "avtca"
    summary = "AVT-CA (Dhanith et al.): frame encoder with attention, MFCC conv, transformer fusion, cross attention"
    paper = "Dhanith et al., AVT-CA (Tables 5, 6, 8, 9)"
    trains_on = INPUTS
    config_class = AvtcaConfig
    presets = presets_from(PRESETS)
    variants = variants_from(VARIANTS, CITES)
    default_variant = "full"
    # augment stays False: the paper names no augmentation (--set augment=true turns it on)

    def model(self, config: AvtcaConfig, names: list[str]) -> Avtca:
        return Avtca(config, len(names), names)
