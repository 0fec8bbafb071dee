"""Sequence encoders for variable-length clips: a compact Conformer and a vanilla Transformer.

Both follow torchaudio's contract ``forward(x [B, T, D_in] float, lengths [B] long) ->
(y [B, T, D_out] float, lengths)``: only the first ``lengths[b]`` rows of clip ``b`` are valid.

Padding is masked everywhere, so a clip's output never depends on how much padding its batch has
(``tests/test_models.py`` proves it):

* attention takes a key padding mask, so no valid frame attends to a padded one;
* padded rows are zeroed before every depthwise convolution: torchaudio's stored Conformer convolves
  over whatever sits in the padding (after the feed-forward and attention layers it is no longer
  zero), so a clip near the end of a short sequence sees its batch neighbours' padding length;
* the convolution module normalises with LayerNorm over channels by default (``conv_norm="layer"``).
  Plain BatchNorm's statistics pool over batch and time, padded frames included, so a frame's
  output would depend on its batch's padding; LayerNorm normalises each frame on its own.
  ``conv_norm="batch"`` is Gulati's BatchNorm made padding-safe (``MaskedBatchNorm``: statistics of
  valid frames only);
* every block zeroes its output at padded rows, so downstream code can rely on zeros there.

Positional information: the Conformer's self-attention uses relative sinusoidal positions as in
Gulati et al. (``pos_enc="relative"``, the default; padding-safe because a score depends on the
offset i - j only); ``pos_enc="none"`` leaves positions to the depthwise convolution, as
torchaudio's Conformer does. The Transformer has no convolution, so it adds
the sinusoidal absolute encoding of the original Transformer at its input, as a vanilla Transformer
does: without it self-attention would be permutation-invariant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from aver.registry import Registry

POS_ENCODINGS = ("relative", "none")


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Bool ``[B, max_len]``, True at padded rows (the ``key_padding_mask`` convention).

    ``lengths``: integer ``[B]``. Raises ValueError unless every length is in ``1..max_len``: an
    empty clip would leave attention a softmax over nothing (NaN).
    """
    if lengths.ndim != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor [B], got {lengths.dtype} {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > max_len):
        raise ValueError(
            f"lengths must lie in 1..{max_len} (the padded length), got {lengths.tolist()}: "
            "drop empty clips before batching"
        )
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` float ``[B, T, D]`` with the rows where ``mask`` (bool ``[B, T]``) is True set to 0."""
    return x.masked_fill(mask[..., None], 0.0)


def _check_dims(d_model: int, n_heads: int, n_blocks: int) -> None:
    if d_model < 1 or n_heads < 1 or d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")


class FeedForward(nn.Module):
    """Pre-norm position-wise feed-forward module: ``[B, T, D] -> [B, T, D]`` (no residual)."""

    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ff_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(ff_dim, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, T, D]`` -> float ``[B, T, D]``."""
        return self.net(x)


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over channels whose batch statistics pool the VALID frames only (``[B, T, D]`` input).

    Gulati's convolution module normalises with BatchNorm; plain BatchNorm would pool padded frames
    too, so a clip's output would depend on its batch's padding. Here training statistics come from
    valid rows and update the running estimates as ``nn.BatchNorm1d`` does; evaluation uses them.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return nn.functional.batch_norm(
                x.transpose(1, 2),
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                False,
                0.0,
                self.eps,
            ).transpose(1, 2)
        valid = x[~mask]  # [N_valid, D]
        mean, var = valid.mean(0), valid.var(0, unbiased=False)
        with torch.no_grad():
            n = valid.shape[0]
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            unbiased = var.detach() * n / max(n - 1, 1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked += 1
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


CONV_NORMS = ("layer", "batch")


class ConvModule(nn.Module):
    """Conformer convolution module that never lets padding leak into valid frames.

    LayerNorm -> pointwise conv (D -> 2D) -> GLU -> zero padding -> depthwise conv (``kernel``) ->
    LayerNorm over channels (not BatchNorm: see the module docstring) -> SiLU -> pointwise conv ->
    dropout. Only the depthwise conv mixes time steps, so zeroing right before it is sufficient.
    """

    def __init__(self, d_model: int, kernel: int, dropout: float, norm: str = "layer") -> None:
        super().__init__()
        if norm not in CONV_NORMS:
            raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {norm!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd and positive ('same' padding), got {kernel}")
        self.in_norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.mid_norm = nn.LayerNorm(d_model) if norm == "layer" else MaskedBatchNorm(d_model)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, T, D]``, ``mask`` bool ``[B, T]`` (True = padded) -> ``[B, T, D]``.

        No residual. Valid rows depend only on valid rows of ``x``; padded rows are zero.
        """
        y = self.glu(self.pointwise_in(self.in_norm(x).transpose(1, 2)))  # [B, D, T]
        y = y.masked_fill(mask[:, None, :], 0.0)
        y = self.depthwise(y).transpose(1, 2)  # [B, T, D]
        y = self.mid_norm(y) if isinstance(self.mid_norm, nn.LayerNorm) else self.mid_norm(y, mask)
        y = self.pointwise_out(self.act(y).transpose(1, 2)).transpose(1, 2)
        return zero_padding(self.dropout(y), mask)


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with relative sinusoidal positions (Transformer-XL; Gulati et al.'s
    Conformer): ``score_ij = (q_i + u) k_j + (q_i + v) W_p r_{i-j}``, with learned biases ``u, v``.

    ``r_{i-j}`` is the sinusoid of the offset ``i - j`` alone, so a frame's output does not depend
    on the padded length of its batch (keys at padding are masked as usual).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.h, self.d_k = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.pos = nn.Linear(d_model, d_model, bias=False)
        self.bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))
        nn.init.xavier_uniform_(self.bias_u)
        nn.init.xavier_uniform_(self.bias_v)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, T, D]``, ``mask`` bool ``[B, T]`` (True = padded) -> ``[B, T, D]``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.d_k).unbind(2)  # each [B, T, H, d_k]
        offsets = torch.arange(t - 1, -t, -1, device=x.device)  # row r holds offset t-1-r
        r = self.pos(sinusoidal_positions(2 * t - 1, d, x.device, x.dtype, offsets)).view(
            2 * t - 1, self.h, self.d_k
        )
        ac = torch.einsum("bihd,bjhd->bhij", q + self.bias_u, k)
        bd = torch.einsum("bihd,rhd->bhir", q + self.bias_v, r)  # [B, H, T, 2T-1]
        i = torch.arange(t, device=x.device)
        index = (t - 1 - i[:, None] + i[None, :]).expand(b, self.h, t, t)  # offset i - j
        scores = (ac + torch.gather(bd, 3, index)) / math.sqrt(self.d_k)
        scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
        attn = self.dropout(torch.softmax(scores, dim=-1))
        y = torch.einsum("bhij,bjhd->bihd", attn, v).reshape(b, t, d)
        return self.out(y)


class ConformerBlock(nn.Module):
    """FFN/2 -> MHSA -> convolution module -> FFN/2 -> LayerNorm, each with a residual (Gulati et al.).

    ``pos_enc="relative"``: self-attention with relative sinusoidal positions, as Gulati's block;
    ``"none"``: plain multi-head attention (positions come from the convolution module only).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ff_mult: int,
        conv_kernel: int,
        dropout: float,
        pos_enc: str = "relative",
        ff_dim: int | None = None,
        conv_norm: str = "layer",
    ) -> None:
        super().__init__()
        if pos_enc not in POS_ENCODINGS:
            raise ValueError(f"pos_enc must be one of {POS_ENCODINGS}, got {pos_enc!r}")
        self.ff1 = FeedForward(d_model, ff_mult * d_model if ff_dim is None else ff_dim, dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.relative = pos_enc == "relative"
        if self.relative:
            self.attn = RelPositionAttention(d_model, n_heads, dropout)
        else:
            self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(d_model, conv_kernel, dropout, conv_norm)
        self.ff2 = FeedForward(d_model, ff_mult * d_model if ff_dim is None else ff_dim, dropout)
        self.out_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, T, D]``, ``mask`` bool ``[B, T]`` (True = padded) -> ``[B, T, D]``, zero at padding."""
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        if self.relative:
            h = self.attn(h, mask)
        else:
            h, _ = self.attn(h, h, h, key_padding_mask=mask, need_weights=False)
        x = x + self.attn_dropout(h)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return zero_padding(self.out_norm(x), mask)


class ConformerEncoder(nn.Module):
    """Input Linear ``d_in -> d_model``, ``n_blocks`` Conformer blocks, output Linear ``d_model -> d_out``.

    DE-III's setting: ``d_model`` 512, 8 heads, ``d_out`` 1408; 3 blocks for audio and frames, 2 for flow.
    """

    def __init__(
        self,
        d_in: int,
        d_model: int = 512,
        d_out: int = 1408,
        n_blocks: int = 3,
        n_heads: int = 8,
        ff_mult: int = 4,
        conv_kernel: int = 31,
        dropout: float = 0.1,
        pos_enc: str = "relative",
        ff_dim: int | None = None,
        conv_norm: str = "layer",
    ) -> None:
        super().__init__()
        _check_dims(d_model, n_heads, n_blocks)
        self.input = nn.Linear(d_in, d_model)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, n_heads, ff_mult, conv_kernel, dropout, pos_enc, ff_dim, conv_norm)
            for _ in range(n_blocks)
        )
        self.output = nn.Linear(d_model, d_out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` float ``[B, T, d_in]``, ``lengths`` long ``[B]`` -> (float ``[B, T, d_out]``, ``lengths``).

        Rows ``t >= lengths[b]`` of the output are zero, whatever the input holds there.
        """
        lengths = lengths.to(x.device)
        mask = padding_mask(lengths, x.shape[1])
        x = zero_padding(self.input(x), mask)
        for block in self.blocks:
            x = block(x, mask)
        return zero_padding(self.output(x), mask), lengths


def sinusoidal_positions(
    length: int, dim: int, device: torch.device, dtype: torch.dtype, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The original Transformer's sinusoidal encoding of ``positions`` (default ``0..length-1``;
    negative offsets for relative attention): float ``[length, dim]``."""
    position = (torch.arange(length, device=device) if positions is None else positions).float()[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.to(dtype)


class TransformerEncoder(nn.Module):
    """Vanilla Transformer encoder with the Conformer's signature (the IFE-V-Trans ablation).

    Input Linear + sinusoidal positions, ``n_blocks`` pre-norm ``nn.TransformerEncoderLayer``, a final
    LayerNorm (pre-norm stacks need one) and the output Linear. ``conv_kernel`` and ``pos_enc`` are
    accepted so both encoders build from the same arguments, and ignored: this encoder has no
    convolution and always uses the vanilla Transformer's absolute positions.
    """

    def __init__(
        self,
        d_in: int,
        d_model: int = 512,
        d_out: int = 1408,
        n_blocks: int = 3,
        n_heads: int = 8,
        ff_mult: int = 4,
        conv_kernel: int = 31,
        dropout: float = 0.1,
        pos_enc: str = "absolute",
        ff_dim: int | None = None,
        conv_norm: str = "layer",
    ) -> None:
        super().__init__()
        _check_dims(d_model, n_heads, n_blocks)
        self.input = nn.Linear(d_in, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                ff_mult * d_model if ff_dim is None else ff_dim,
                dropout,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, d_out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` float ``[B, T, d_in]``, ``lengths`` long ``[B]`` -> (float ``[B, T, d_out]``, ``lengths``).

        Rows ``t >= lengths[b]`` of the output are zero, whatever the input holds there.
        """
        lengths = lengths.to(x.device)
        mask = padding_mask(lengths, x.shape[1])
        x = self.input(x) + sinusoidal_positions(x.shape[1], self.input.out_features, x.device, x.dtype)
        x = zero_padding(x, mask)
        for layer in self.layers:
            x = zero_padding(layer(x, src_key_padding_mask=mask), mask)
        return zero_padding(self.output(self.norm(x)), mask), lengths


Encoder = ConformerEncoder | TransformerEncoder

# registry key = config value (`DE3Config.encoder`) = CLI choice
ENCODERS: Registry[Callable[..., Encoder]] = Registry("sequence encoder")
ENCODERS.add("conformer", ConformerEncoder)
ENCODERS.add("transformer", TransformerEncoder)


def build_encoder(kind: str, d_in: int, **kwargs) -> Encoder:
    """An encoder from ``ENCODERS`` by name; ``kwargs`` as ``ConformerEncoder`` takes them."""
    return ENCODERS.get(kind)(d_in, **kwargs)
