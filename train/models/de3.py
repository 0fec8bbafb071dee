"""DE-III: detail-enhanced intra- and inter-modal interaction (Shi et al., section 3, eq. 1-7).

Data flow (B clips, T video frames, T' = T - 1 frame/flow pairs, M audio fragments):

    frames [B, T, Dv], flow [B, T', Dv] --visual front-end (PAE, eq. 1-3)--> ov [B, T', H]
    audio [B, M, Da] --Conformer--> a [B, M, H]
    IFE (eq. 4-6): ov attends to a (V-cross), a attends to ov (A-cross), both from the pre-IFE features
    masked max-pool over time -> v*, a* [B, H] -> heads: video(v*), audio(a*), fusion([v*, a*])

The visual front-end is chosen by ``DE3Config.visual`` (a registry, ``VISUAL_FRONTENDS``), which is
how the ablations of Table 3 swap PAE for another way of combining frames and flow.

Flow alignment: flow map p lies between frames p and p+1 (``cache_layout.md``), and the paper pairs
flow o_i (between v_{i-1} and v_i) with frame v_i, so the front-ends that use both streams pair
``frames[:, 1:]`` with ``flow`` in ``pair_frames_with_flow``: the first frame, which has no incoming
flow, is dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from aver.registry import Registry
from aver.train.models.conformer import (
    CONV_NORMS,
    ENCODERS,
    POS_ENCODINGS,
    build_encoder,
    padding_mask,
    zero_padding,
)

# Fields added after aver 0.1, with the value a model saved before them was built with.
LEGACY = {"ife_ffb": "residual", "pos_enc": "none", "audio": True}
# IFE feed-forward block: the paper's "two linear layers" (eq. 6; "the linear feed-forward block"),
# or a pre-LayerNorm ReLU block with a residual (refines rather than replaces the features).
IFE_FFB = ("linear", "residual")
# ife mode -> (V-cross: video attends to audio, A-cross: audio attends to video)
IFE_MODES: dict[str, tuple[bool, bool]] = {
    "both": (True, True),
    "none": (False, False),
    "video": (True, False),
    "audio": (False, True),
}


@dataclass(frozen=True)
class DE3Config:
    """Architecture of one DE-III model; stored in every checkpoint.

    ``d_hidden`` is the per-modality width after the encoders (the paper's 1408) and the width of the
    IFE; ``d_model`` the width inside the encoders (512). ``encoder`` is the visual sequence model
    (frames and flow) and ``encoder_audio`` the audio one: the paper's IFE-V-Trans ablation replaces
    the Conformer "at the image level", so the variant changes only ``encoder``. ``visual`` picks the
    front-end in ``VISUAL_FRONTENDS``; ``ife`` which cross-attentions exist (``IFE_MODES``).
    """

    d_frames: int
    d_flow: int
    d_audio: int
    n_outputs: int
    d_model: int = 512
    d_hidden: int = 1408
    n_heads: int = 8
    blocks_audio: int = 3
    blocks_frames: int = 3
    blocks_flow: int = 2
    head_hidden: int = 512
    ff_mult: int = 4
    ff_dim: int | None = None  # encoder feed-forward width; None = ff_mult * d_model (see the README)
    conv_norm: str = "layer"  # Conformer convolution-module norm: LayerNorm, or BatchNorm over valid frames
    dropout: float = 0.1
    encoder: str = "conformer"
    encoder_audio: str = "conformer"
    visual: str = "pae"
    ife: str = "both"
    conv_kernel: int = 31
    ife_ffb: str = "linear"  # IFE feed-forward block: "linear" (paper: two linear layers) or "residual"
    pos_enc: str = "relative"  # Conformer self-attention: relative sinusoidal positions (Gulati) or "none"
    audio: bool = True  # False: no audio path at all (the paper's None-IFE: RGB and flow only)

    def __post_init__(self) -> None:
        for f in fields(self):  # f.type is the annotation string (postponed annotations)
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"DE3Config.{f.name} must be a positive integer, got {value!r}")
        if self.ff_dim is not None and (
            isinstance(self.ff_dim, bool) or not isinstance(self.ff_dim, int) or self.ff_dim < 1
        ):
            raise ValueError(f"DE3Config.ff_dim must be a positive integer or None, got {self.ff_dim!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"DE3Config.d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"DE3Config.conv_kernel must be odd ('same' padding), got {self.conv_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DE3Config.dropout must be in [0, 1), got {self.dropout}")
        registries = {
            "encoder": ENCODERS,
            "encoder_audio": ENCODERS,
            "visual": VISUAL_FRONTENDS,
            "ife": IFE_MODES,
            "ife_ffb": IFE_FFB,
            "pos_enc": POS_ENCODINGS,
            "conv_norm": CONV_NORMS,
        }
        for name, choices in registries.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"DE3Config.{name}={getattr(self, name)!r}; choose one of {list(choices)}")
        if not self.audio and self.ife != "none":
            raise ValueError("DE3Config.audio=False leaves nothing to attend to: it needs ife='none'")
        if self.visual in ("temporal_concat", "sum") and self.d_frames != self.d_flow:
            raise ValueError(
                f"visual={self.visual!r} puts frame and flow features in one sequence, so d_frames "
                f"({self.d_frames}) must equal d_flow ({self.d_flow}); use 'channel_concat' or 'pae'"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DE3Config:
        """The inverse of ``to_dict``; unknown keys are an error (a checkpoint from another version).

        Fields a checkpoint from an older aver lacks take the value that reproduces it (``LEGACY``).
        """
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown DE3Config fields {sorted(unknown)}")
        return cls(**{**LEGACY, **data})


def _encoder(cfg: DE3Config, d_in: int, n_blocks: int, d_out: int | None = None, kind: str | None = None):
    return build_encoder(
        kind or cfg.encoder,
        d_in,
        d_model=cfg.d_model,
        d_out=d_out or cfg.d_hidden,
        n_blocks=n_blocks,
        n_heads=cfg.n_heads,
        ff_mult=cfg.ff_mult,
        conv_kernel=cfg.conv_kernel,
        dropout=cfg.dropout,
        pos_enc=cfg.pos_enc,
        ff_dim=cfg.ff_dim,
        conv_norm=cfg.conv_norm,
    )


def pair_frames_with_flow(
    frames: torch.Tensor, frame_lengths: torch.Tensor, flow: torch.Tensor, flow_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair flow o_i with frame v_i: ``(frames[:, 1:], flow, lengths)``, both float ``[B, T', D]``.

    ``frames`` float ``[B, T, Dv]``, ``flow`` float ``[B, P, Do]``, lengths long ``[B]``. Requires
    ``flow_lengths == frame_lengths - 1``: for a cache made with another flow window or stride the
    data layer has already resampled the frames to each flow map's end frame
    (``aver.train.data.flow_end_frames``).
    """
    frame_lengths, flow_lengths = frame_lengths.to(frames.device), flow_lengths.to(frames.device)
    if frame_lengths.shape != flow_lengths.shape or not torch.equal(flow_lengths, frame_lengths - 1):
        raise ValueError(
            f"flow must pair 1:1 with frames[1:] (n_flow == n_frames - 1, flow window = stride = 1); "
            f"got frame lengths {frame_lengths.tolist()} and flow lengths {flow_lengths.tolist()}"
        )
    if int(flow_lengths.min()) < 1:
        raise ValueError(
            f"every clip needs at least 2 frames to have a flow map; frame lengths {frame_lengths.tolist()}"
        )
    n = min(frames.shape[1] - 1, flow.shape[1])  # common padded length; every valid row fits
    return frames[:, 1 : 1 + n], flow[:, :n], flow_lengths


class OVFusion(nn.Module):
    """OV-fusion (eq. 2-3): per-time-point softmax weights over flow and frame, then a weighted sum.

    ``(beta_o, beta_v) = softmax(FC([o : v]))``; ``ov = beta_o W_o o + beta_v W_v v``.
    """

    def __init__(self, d_flow: int, d_frames: int, d_out: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_flow + d_frames, 2)
        self.proj_flow = nn.Linear(d_flow, d_out)
        self.proj_frames = nn.Linear(d_frames, d_out)

    def forward(
        self, flow: torch.Tensor, frames: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``flow`` ``[B, T, Do]``, ``frames`` ``[B, T, Dv]``, ``lengths`` ``[B]`` ->
        (ov float ``[B, T, d_out]``, beta float ``[B, T, 2]`` = (beta_o, beta_v)); both zero at padding."""
        mask = padding_mask(lengths, flow.shape[1])
        beta = torch.softmax(self.gate(torch.cat([flow, frames], dim=-1)), dim=-1)
        ov = beta[..., :1] * self.proj_flow(flow) + beta[..., 1:] * self.proj_frames(frames)
        return zero_padding(ov, mask), zero_padding(beta, mask)


# Visual front-ends: forward(batch) -> (ov [B, T', d_hidden], lengths [B], beta [B, T', 2] or None).
# Each creates only the modules it uses, so a variant has no parameters without gradients.


class PAE(nn.Module):
    """Pair-wise attention enhancement (eq. 1-3): a Conformer per stream, then OV-fusion."""

    required = ("frames", "frame_lengths", "flow", "flow_lengths")

    def __init__(self, cfg: DE3Config) -> None:
        super().__init__()
        self.frames_encoder = _encoder(cfg, cfg.d_frames, cfg.blocks_frames)
        self.flow_encoder = _encoder(cfg, cfg.d_flow, cfg.blocks_flow)
        self.fusion = OVFusion(cfg.d_hidden, cfg.d_hidden, cfg.d_hidden)

    def forward(self, batch: dict[str, torch.Tensor]):
        frames, flow, lengths = pair_frames_with_flow(*(batch[k] for k in self.required))
        v, _ = self.frames_encoder(frames, lengths)
        o, _ = self.flow_encoder(flow, lengths)
        ov, beta = self.fusion(o, v, lengths)
        return ov, lengths, beta


class SingleStream(nn.Module):
    """One stream only (IFE-V-F: all T frames, 3 blocks; IFE-V-O: the T-1 flow maps, 2 blocks); no fusion."""

    def __init__(self, cfg: DE3Config, stream: str) -> None:
        super().__init__()
        d_in, n_blocks, lengths_key = {
            "frames": (cfg.d_frames, cfg.blocks_frames, "frame_lengths"),
            "flow": (cfg.d_flow, cfg.blocks_flow, "flow_lengths"),
        }[stream]
        self.required = (stream, lengths_key)
        self.encoder = _encoder(cfg, d_in, n_blocks)

    def forward(self, batch: dict[str, torch.Tensor]):
        x, lengths = self.encoder(*(batch[k] for k in self.required))
        return x, lengths, None


class FusedInput(nn.Module):
    """FODC / FODS: frames and flow combined per time point (channel concat or sum) into ONE encoder.

    The paper replaces PAE by "one single conformer followed by one OV-fusion block". Our reading:
    the single encoder outputs ``2 * d_hidden`` channels, split into a flow half and a frame half,
    which OV-fusion weighs exactly as in PAE. The encoder gets ``blocks_frames`` blocks.
    """

    required = PAE.required
    combine_fns = {
        "channel_concat": lambda frames, flow: torch.cat([frames, flow], dim=-1),
        "sum": lambda frames, flow: frames + flow,
    }

    def __init__(self, cfg: DE3Config, combine: str) -> None:
        super().__init__()
        self.combine = self.combine_fns[combine]
        d_in = cfg.d_frames + cfg.d_flow if combine == "channel_concat" else cfg.d_frames
        self.encoder = _encoder(cfg, d_in, cfg.blocks_frames, d_out=2 * cfg.d_hidden)
        self.fusion = OVFusion(cfg.d_hidden, cfg.d_hidden, cfg.d_hidden)

    def forward(self, batch: dict[str, torch.Tensor]):
        frames, flow, lengths = pair_frames_with_flow(*(batch[k] for k in self.required))
        y, _ = self.encoder(self.combine(frames, flow), lengths)
        o, v = y.chunk(2, dim=-1)
        ov, beta = self.fusion(o, v, lengths)
        return ov, lengths, beta


class TemporalConcat(nn.Module):
    """FOSC: each clip's n frames and n flow maps as ONE sequence of 2n steps into one encoder.

    Packed per clip as ``[v_1..v_n, o_1..o_n, padding]`` so the valid steps stay contiguous. After
    the encoder, output step i (frame v_i) and step n + i (flow o_i) are paired again and OV-fused,
    which is our reading of "one single conformer followed by one OV-fusion block". No segment
    embedding marks the two halves (the paper mentions none); the encoder tells them apart by content.
    """

    required = PAE.required

    def __init__(self, cfg: DE3Config) -> None:
        super().__init__()
        self.encoder = _encoder(cfg, cfg.d_frames, cfg.blocks_frames)
        self.fusion = OVFusion(cfg.d_hidden, cfg.d_hidden, cfg.d_hidden)

    @staticmethod
    def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

    def forward(self, batch: dict[str, torch.Tensor]):
        frames, flow, lengths = pair_frames_with_flow(*(batch[k] for k in self.required))
        n_pad = frames.shape[1]
        t = torch.arange(2 * n_pad, device=frames.device)[None, :]  # [1, 2T']
        n = lengths[:, None]
        # packed step t reads frame t (t < n) or flow t - n, which sits at n_pad + t - n in the cat
        index = torch.where(t < n, t, n_pad + t - n).clamp(max=2 * n_pad - 1)
        packed = self._gather(torch.cat([frames, flow], dim=1), index)
        y, _ = self.encoder(packed, 2 * lengths)  # rows >= 2n are zeroed inside the encoder
        v = y[:, :n_pad]
        o = self._gather(y, (n + t[:, :n_pad]).clamp(max=2 * n_pad - 1))
        ov, beta = self.fusion(o, v, lengths)
        return ov, lengths, beta


class EarlyFusion(nn.Module):
    """IFE-V-Early: OV-fusion (eq. 2-3) on the extracted features, then one encoder (``blocks_frames``).

    The gate reads the raw ``[o : v]`` and W_o, W_v project each stream to ``d_model``, the encoder's
    input width.
    """

    required = PAE.required

    def __init__(self, cfg: DE3Config) -> None:
        super().__init__()
        self.fusion = OVFusion(cfg.d_flow, cfg.d_frames, cfg.d_model)
        self.encoder = _encoder(cfg, cfg.d_model, cfg.blocks_frames)

    def forward(self, batch: dict[str, torch.Tensor]):
        frames, flow, lengths = pair_frames_with_flow(*(batch[k] for k in self.required))
        fused, beta = self.fusion(flow, frames, lengths)
        ov, _ = self.encoder(fused, lengths)
        return ov, lengths, beta


# registry key = DE3Config.visual
VISUAL_FRONTENDS: Registry = Registry("visual front-end")
for _name, _factory in {
    "pae": PAE,
    "frames": partial(SingleStream, stream="frames"),
    "flow": partial(SingleStream, stream="flow"),
    "temporal_concat": TemporalConcat,
    "channel_concat": partial(FusedInput, combine="channel_concat"),
    "sum": partial(FusedInput, combine="sum"),
    "early": EarlyFusion,
}.items():
    VISUAL_FRONTENDS.add(_name, _factory)


class InterModalAttention(nn.Module):
    """IFE (eq. 4-6), single head: target x attends to the other modality y by cosine similarity.

    ``s_ij = cos(W_q x_i, W_k y_j)``; ``alpha = softmax_j(s)`` over valid j; ``x'_i = sum_j alpha_ij
    W_v y_j + x_i``; then the feed-forward block: ``ffb="linear"`` is the paper's two linear layers
    (``x'' = W_2 W_1 x'``), ``ffb="residual"`` adds a pre-LayerNorm, a ReLU and a residual
    (``x'' = x' + W_2 relu(W_1 LN(x'))``); widths stay ``d``. As in eq. 5 there is no temperature: scores lie in
    [-1, 1], so attention is soft (weights differ by at most a factor e^2). Dropout acts on the
    attended update and in the FFB, never on ``alpha``, so the returned maps are the true weights.
    """

    def __init__(self, d: int, dropout: float, eps: float = 1e-8, ffb: str = "linear") -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(d, d) for _ in range(3))
        self.eps = eps
        self.dropout = nn.Dropout(dropout)
        self.residual_ffb = ffb == "residual"
        if self.residual_ffb:
            self.ffb = nn.Sequential(
                nn.LayerNorm(d),
                nn.Linear(d, d),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(d, d),
                nn.Dropout(dropout),
            )
        else:
            self.ffb = nn.Sequential(nn.Linear(d, d), nn.Linear(d, d))

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (eq. 4): ``x`` ``[B, Tx, d]``, ``y`` ``[B, Ty, d]`` -> float ``[B, Tx, Ty]`` in [-1, 1]."""
        q = F.normalize(self.query(x), dim=-1, eps=self.eps)
        k = F.normalize(self.key(y), dim=-1, eps=self.eps)
        return (q @ k.transpose(1, 2)).clamp(-1.0, 1.0)  # clamp: rounding can exceed 1 by an ulp

    def forward(
        self, x: torch.Tensor, x_lengths: torch.Tensor, y: torch.Tensor, y_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, Tx, d]`` (queries), ``y`` ``[B, Ty, d]`` (keys/values), lengths ``[B]`` ->
        (x'' float ``[B, Tx, d]``, alpha float ``[B, Tx, Ty]``). Rows of alpha sum to 1 over valid
        keys; alpha is 0 at padded keys and on padded query rows, and x'' is 0 on padded rows."""
        x_mask = padding_mask(x_lengths.to(x.device), x.shape[1])
        y_mask = padding_mask(y_lengths.to(y.device), y.shape[1])
        s = self.scores(x, y).masked_fill(y_mask[:, None, :], float("-inf"))
        alpha = torch.softmax(s, dim=-1).masked_fill(x_mask[..., None], 0.0)
        x = x + self.dropout(alpha @ self.value(y))
        x = x + self.ffb(x) if self.residual_ffb else self.ffb(x)
        return zero_padding(x, x_mask), alpha


class PredictionHead(nn.Module):
    """MLP head: Linear -> ReLU -> Dropout -> Linear; ``[B, d_in] -> [B, n_outputs]``."""

    def __init__(self, d_in: int, d_hidden: int, n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_hidden, n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, d_in]`` -> float ``[B, n_outputs]`` (logits, or continuous predictions)."""
        return self.net(x)


def masked_max(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Max over time of the valid rows only: ``x`` float ``[B, T, D]``, ``lengths`` ``[B]`` -> ``[B, D]``."""
    mask = padding_mask(lengths.to(x.device), x.shape[1])
    return x.masked_fill(mask[..., None], float("-inf")).amax(dim=1)


class DE3(nn.Module):
    """The DE-III model; the variant is entirely described by its ``DE3Config``."""

    def __init__(self, cfg: DE3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VISUAL_FRONTENDS.get(cfg.visual)(cfg)
        video_cross, audio_cross = IFE_MODES[cfg.ife]
        ife = partial(InterModalAttention, cfg.d_hidden, cfg.dropout, ffb=cfg.ife_ffb)
        self.ife_video = ife() if video_cross else None
        self.ife_audio = ife() if audio_cross else None
        self.head_video = PredictionHead(cfg.d_hidden, cfg.head_hidden, cfg.n_outputs, cfg.dropout)
        if cfg.audio:  # the paper's None-IFE has no audio path: the video head alone
            self.audio_encoder = _encoder(cfg, cfg.d_audio, cfg.blocks_audio, kind=cfg.encoder_audio)
            self.head_audio = PredictionHead(cfg.d_hidden, cfg.head_hidden, cfg.n_outputs, cfg.dropout)
            self.head_fusion = PredictionHead(2 * cfg.d_hidden, cfg.head_hidden, cfg.n_outputs, cfg.dropout)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys this variant reads, features cast to the model's dtype (caches store float16)."""
        needed = (*self.visual.required, *(("audio", "audio_lengths") if self.cfg.audio else ()))
        missing = [k for k in needed if k not in batch]
        if missing:
            raise ValueError(
                f"DE3(visual={self.cfg.visual!r}) needs batch keys {missing}; got {sorted(batch)}"
            )
        dtype = self.head_video.net[0].weight.dtype
        return {k: batch[k] if k.endswith("lengths") else batch[k].to(dtype) for k in needed}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Predictions of the three heads for a batch.

        ``batch``: ``frames`` float ``[B, T, d_frames]``, ``frame_lengths`` long ``[B]``, ``flow`` float
        ``[B, T-1, d_flow]`` (flow p between frames p and p+1), ``flow_lengths`` long ``[B]``, ``audio``
        float ``[B, M, d_audio]``, ``audio_lengths`` long ``[B]``; keys a variant does not use may be absent.

        Returns ``logits_video``, ``logits_audio``, ``logits_fusion`` float ``[B, n_outputs]``;
        ``lengths_video`` ``[B]`` (T' valid visual steps) and ``lengths_audio`` ``[B]``; when the
        variant has them, ``attn_video`` ``[B, T', M]`` (V-cross alpha), ``attn_audio`` ``[B, M, T']``
        (A-cross alpha) and ``beta`` ``[B, T', 2]`` (OV-fusion weights (flow, frames), 0 at padding).
        """
        batch = self._inputs(batch)
        ov, v_lengths, beta = self.visual(batch)
        out: dict[str, torch.Tensor] = {"lengths_video": v_lengths}
        if beta is not None:
            out["beta"] = beta
        if not self.cfg.audio:
            out["logits_video"] = self.head_video(masked_max(ov, v_lengths))
            return out
        a, a_lengths = self.audio_encoder(batch["audio"], batch["audio_lengths"])
        out["lengths_audio"] = a_lengths
        # both directions read the pre-IFE features, so neither direction depends on the other
        v_fused, a_fused = ov, a
        if self.ife_video is not None:
            v_fused, out["attn_video"] = self.ife_video(ov, v_lengths, a, a_lengths)
        if self.ife_audio is not None:
            a_fused, out["attn_audio"] = self.ife_audio(a, a_lengths, ov, v_lengths)
        v_star, a_star = masked_max(v_fused, v_lengths), masked_max(a_fused, a_lengths)
        out["logits_video"] = self.head_video(v_star)
        out["logits_audio"] = self.head_audio(a_star)
        out["logits_fusion"] = self.head_fusion(torch.cat([v_star, a_star], dim=-1))
        return out
