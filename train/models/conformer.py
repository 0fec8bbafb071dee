"""Sequence encoders for variable-length clips: a compact Conformer and a vanilla Transformer.

Both follow torchaudio's contract ``forward(x [B, T, D_in] float, lengths [B] long) ->
(y [B, T, D_out] float, lengths)``: only the first ``lengths[b]`` rows of clip ``b`` are valid.

Padding is masked everywhere, so a clip's output never depends on how much padding its batch has
(``tests/test_models.py`` proves it):

* attention takes a key padding mask, so no valid frame attends to a padded one;
* padded rows are zeroed before every depthwise convolution: torchaudio's stored Conformer convolves
  over whatever sits in the padding (after the feed-forward and attention layers it is no longer
  zero), so a clip near the end of a short sequence sees its batch neighbours' padding length;
* the convolution module normalises with LayerNorm over channels instead of BatchNorm. BatchNorm's
  statistics pool over batch and time, padded frames included, and GroupNorm's pool over time, so
  both make a frame's output depend on its batch; LayerNorm normalises each frame on its own;
* every block zeroes its output at padded rows, so downstream code can rely on zeros there.

Positional information: the Conformer adds no explicit positions. Its depthwise convolution gives
each frame relative, translation-equivariant position cues (as in torchaudio's Conformer, which the
DE-III reference builds on, and which expects no positional encoding), and absolute positions of a
face-video frame carry little meaning for emotion. The Transformer has no convolution, so it adds
the sinusoidal absolute encoding of the original Transformer at its input, as a vanilla Transformer
does: without it self-attention would be permutation-invariant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from aver.registry import Registry


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

    def __init__(self, d_model: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ff_mult * d_model),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, T, D]`` -> float ``[B, T, D]``."""
        return self.net(x)


class ConvModule(nn.Module):
    """Conformer convolution module that never lets padding leak into valid frames.

    LayerNorm -> pointwise conv (D -> 2D) -> GLU -> zero padding -> depthwise conv (``kernel``) ->
    LayerNorm over channels (not BatchNorm: see the module docstring) -> SiLU -> pointwise conv ->
    dropout. Only the depthwise conv mixes time steps, so zeroing right before it is sufficient.
    """

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd and positive ('same' padding), got {kernel}")
        self.in_norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.mid_norm = nn.LayerNorm(d_model)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, T, D]``, ``mask`` bool ``[B, T]`` (True = padded) -> ``[B, T, D]``.

        No residual. Valid rows depend only on valid rows of ``x``; padded rows are zero.
        """
        y = self.glu(self.pointwise_in(self.in_norm(x).transpose(1, 2)))  # [B, D, T]
        y = y.masked_fill(mask[:, None, :], 0.0)
        y = self.mid_norm(self.depthwise(y).transpose(1, 2))  # [B, T, D]
        y = self.pointwise_out(self.act(y).transpose(1, 2)).transpose(1, 2)
        return zero_padding(self.dropout(y), mask)


class ConformerBlock(nn.Module):
    """FFN/2 -> MHSA -> convolution module -> FFN/2 -> LayerNorm, each with a residual (Gulati et al.)."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, conv_kernel: int, dropout: float) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_mult, dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(d_model, conv_kernel, dropout)
        self.ff2 = FeedForward(d_model, ff_mult, dropout)
        self.out_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` float ``[B, T, D]``, ``mask`` bool ``[B, T]`` (True = padded) -> ``[B, T, D]``, zero at padding."""
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
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
    ) -> None:
        super().__init__()
        _check_dims(d_model, n_heads, n_blocks)
        self.input = nn.Linear(d_in, d_model)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, n_heads, ff_mult, conv_kernel, dropout) for _ in range(n_blocks)
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


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The original Transformer's absolute positional encoding: float ``[length, dim]``."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.to(dtype)


class TransformerEncoder(nn.Module):
    """Vanilla Transformer encoder with the Conformer's signature (the IFE-V-Trans ablation).

    Input Linear + sinusoidal positions, ``n_blocks`` pre-norm ``nn.TransformerEncoderLayer``, a final
    LayerNorm (pre-norm stacks need one) and the output Linear. ``conv_kernel`` is accepted so both
    encoders build from the same arguments, and ignored: this encoder has no convolution.
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
    ) -> None:
        super().__init__()
        _check_dims(d_model, n_heads, n_blocks)
        self.input = nn.Linear(d_in, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, n_heads, ff_mult * d_model, dropout, batch_first=True, norm_first=True
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
