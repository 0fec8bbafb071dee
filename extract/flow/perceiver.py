"""Perceiver IO optical flow (``transformers.PerceiverForOpticalFlow``), tiled over the face crop.

Model input, as in DeepMind's ``io_processors.patches_for_flow`` (which the released weights were
trained with): frames scaled to [-1, 1], zero-padded by one pixel, and for every pixel its 3x3
neighbourhood flattened in TensorFlow ``extract_patches`` order (row, column, channel), giving
``(N, 2, 27, h, w)``. ``torch.nn.functional.unfold`` yields (channel, row, column); we reorder.
The model only runs at exactly ``config.train_size`` (368x496 for the released weights): the
Fourier positions and the decoder's output reshape are fixed to it. Crops are therefore replicate-
padded up to the window if smaller, cut into windows overlapping by ``cfg.tile_overlap`` pixels, all
tiles of all pairs are run as one batch (``max_tiles`` at a time) and overlaps are blended with
weights that fall off linearly towards each tile's border (the scheme of the public demo).

Output: ``logits`` ``(N, h, w, 2)``; the decoder already divides by 100 and the public demo
multiplies by ``FLOW_SCALE_FACTOR = 20`` to get pixels (``cfg.output_scale``). Channel 0 is x
(right) and channel 1 is y (down), flow from frame 0 to frame 1: DeepMind's colab passes
``flow[..., 0], flow[..., 1]`` to ``cv2.cartToPolar(x, y)`` for display, and AutoFlow labels use
that (u, v) order. This axis order could not be checked against real weights here (none offline).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aver.errors import ConfigError, MissingWeightsError
from aver.utils import pinned_to

from ..config import FlowConfig
from .base import FLOW_BACKENDS, FlowBackend, count_params, iter_chunks, sha256_file

DEFAULT_HUB_ID = "deepmind/optical-flow-perceiver"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def patch_features(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel 3x3 patches: ``float [B, 3, H, W]`` in [-1, 1] -> ``float [B, 27, H, W]``.

    Channel ``(dy * 3 + dx) * 3 + c`` holds colour ``c`` of pixel ``(y + dy - 1, x + dx - 1)``; outside
    the image the value is 0 (zero padding of the [-1, 1] image, as in training).
    """
    b, c, h, w = x.shape
    p = F.unfold(x, kernel_size=3, padding=1)  # [B, c*9, H*W], channel-major
    return p.view(b, c, 9, h, w).transpose(1, 2).reshape(b, 9 * c, h, w)


def tile_starts(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows covering ``[0, size)`` (``size >= window``), the last flush with the end."""
    if size <= window:
        return [0]
    step = window - overlap
    if step <= 0:
        raise ConfigError(f"flow.tile_overlap={overlap} must be smaller than the window ({window} px)")
    return list(range(0, size - window, step)) + [size - window]


def _ramp(n: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, device=device, dtype=torch.float32)
    return torch.minimum(i + 1, n - i)


@dataclass(frozen=True)
class TileLayout:
    """Where the windows of one ``height x width`` image lie (after padding to at least the window)."""

    height: int
    width: int
    window: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def plan(cls, height: int, width: int, window: tuple[int, int], overlap: int) -> TileLayout:
        ph, pw = max(height, window[0]), max(width, window[1])
        return cls(
            height,
            width,
            tuple(window),
            tuple(tile_starts(ph, window[0], overlap)),
            tuple(tile_starts(pw, window[1], overlap)),
        )

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height, self.window[0]), max(self.width, self.window[1])

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, Hp, Wp]`` (padded size) -> ``[B * n_tiles, C, wh, ww]``, tiles of one image adjacent."""
        wh, ww = self.window
        tiles = [x[:, :, y : y + wh, x0 : x0 + ww] for y in self.ys for x0 in self.xs]
        return torch.stack(tiles, dim=1).flatten(0, 1)

    def blend(self, tiles: torch.Tensor) -> torch.Tensor:
        """``[B * n_tiles, C, wh, ww]`` -> ``[B, C, height, width]``: border-tapered weighted mean."""
        wh, ww = self.window
        tiles = tiles.unflatten(0, (-1, self.n_tiles))
        b, _, c = tiles.shape[:3]
        # Pixels near a tile's edge saw less context, so they get less say where tiles overlap.
        weight = torch.minimum(_ramp(wh, tiles.device)[:, None], _ramp(ww, tiles.device)[None, :])
        acc = tiles.new_zeros((b, c, *self.padded))
        norm = tiles.new_zeros(self.padded)
        for k, (y, x0) in enumerate((y, x0) for y in self.ys for x0 in self.xs):
            acc[:, :, y : y + wh, x0 : x0 + ww] += tiles[:, k] * weight
            norm[y : y + wh, x0 : x0 + ww] += weight
        return (acc / norm)[:, :, : self.height, : self.width]


def build_model_inputs(
    prev: torch.Tensor, nxt: torch.Tensor, window: tuple[int, int], overlap: int
) -> tuple[torch.Tensor, TileLayout]:
    """Perceiver inputs for all tiles of all pairs.

    Args:
        prev, nxt: ``uint8 [B, 3, H, W]`` RGB frames (the device of the result).
        window: ``(wh, ww)`` = the model's ``train_size``; overlap: pixels shared by adjacent tiles.
    Returns:
        ``float32 [B * n_tiles, 2, 27, wh, ww]`` in [-1, 1] (see ``patch_features``) and the layout.
    """
    b, _, h, w = prev.shape
    layout = TileLayout.plan(h, w, window, overlap)
    x = torch.cat([prev, nxt]).float().div_(127.5).sub_(1.0)
    ph, pw = layout.padded
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
    feats = patch_features(x).unflatten(0, (2, b)).transpose(0, 1)  # [B, 2, 27, Hp, Wp]
    tiles = layout.cut(feats.flatten(1, 2))
    return tiles.unflatten(1, (2, 27)), layout


def tiled_flow(
    run: Callable[[torch.Tensor], torch.Tensor],
    prev: torch.Tensor,
    nxt: torch.Tensor,
    window: tuple[int, int],
    overlap: int,
    max_tiles: int,
) -> torch.Tensor:
    """Flow of whole crops from a model that only sees windows.

    ``run`` maps ``float32 [n, 2, 27, wh, ww]`` tile inputs to ``[n, 2, wh, ww]`` flow in pixels; it is
    called on at most ``max_tiles`` tiles at a time. Returns ``float32 [B, 2, H, W]`` (prev's device).
    """
    inputs, layout = build_model_inputs(prev, nxt, window, overlap)
    outs = torch.cat([run(inputs[s]).float() for s in iter_chunks(inputs.shape[0], max_tiles)])
    return layout.blend(outs)


class CachedFourierPositions(torch.nn.Module):
    """A Fourier position encoding computed once per ``(index_dims, device, dtype)`` and expanded.

    transformers' ``PerceiverImagePreprocessor._build_network_inputs`` calls its
    ``PerceiverFourierPositionEncoding`` on every forward: for the flow model's 368x496 window that
    is a ``[batch, 182,528, 258]`` table of sines and cosines rebuilt per call (on the device in the
    installed transformers 5.x, on the CPU and then copied over in older releases), materialised per
    tile by the ``torch.cat`` in ``generate_fourier_features`` (~1.5 GB float32 for 8 tiles). This
    wrapper computes it once, at batch 1, with the wrapped module (so the values are the very same:
    every row of the batched table is that one) and returns ``expand(batch, -1, -1)``, a view, not a
    copy per tile. Explicit ``pos`` bypasses the cache. The encoding has no parameters, so state
    dicts and ``save_pretrained`` are unchanged.
    """

    MAX_ENTRIES = 4  # (index_dims, device, dtype) keys kept; a model uses one or two

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.computed = 0  # tables built so far (tests count them)

    @property
    def num_dimensions(self) -> int:
        return int(self.inner.num_dimensions)

    def output_size(self, *args: Any, **kwargs: Any) -> int:
        return int(self.inner.output_size(*args, **kwargs))

    def forward(
        self,
        index_dims: Any,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if pos is not None:
            return self.inner(index_dims, batch_size, device=device, dtype=dtype, pos=pos)
        key = (tuple(int(d) for d in index_dims), torch.device(device), dtype)
        table = self._cache.get(key)
        if table is None:
            # a plain tensor even when built under inference_mode, so later autograd-enabled calls can use it
            with torch.inference_mode(False), torch.no_grad():
                table = self.inner(index_dims, 1, device=device, dtype=dtype).to(device)
            if len(self._cache) >= self.MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = table
            self.computed += 1
        return table.expand(int(batch_size), -1, -1)


def cache_position_encoding(model: torch.nn.Module) -> CachedFourierPositions | None:
    """Wrap the Fourier position encoding of this ``PerceiverForOpticalFlow``'s input preprocessor in
    ``CachedFourierPositions`` (this model object only; the transformers classes are untouched).
    Returns the wrapper, or None when the model has no such encoding (another preprocessor)."""
    pre = getattr(getattr(model, "perceiver", None), "input_preprocessor", None)
    enc = getattr(pre, "position_embeddings", None)
    if isinstance(enc, CachedFourierPositions):
        return enc
    if getattr(pre, "position_encoding_type", None) != "fourier" or enc is None:
        return None
    pre.position_embeddings = CachedFourierPositions(enc)
    return pre.position_embeddings


def _load_model(weights: str, overrides: dict[str, Any]) -> tuple[Any, Path | None]:
    """``from_pretrained`` on a local folder or hub id; returns (model, weight file if found)."""
    from transformers import PerceiverForOpticalFlow

    path = Path(weights).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"flow.weights={weights!r} is a file; the perceiver backend needs a folder in "
            "save_pretrained layout (config.json + model.safetensors) or a hub id"
        )
    source = str(path) if path.is_dir() else weights
    try:
        model = PerceiverForOpticalFlow.from_pretrained(source, **overrides)
    except OSError as err:
        raise MissingWeightsError(
            f"flow.weights={weights!r}: PerceiverForOpticalFlow could not be loaded: it is not a local folder "
            f"and not in this machine's Hugging Face cache (nothing is downloaded with HF_HUB_OFFLINE=1). "
            f"On a machine with internet run `PerceiverForOpticalFlow.from_pretrained({weights!r})"
            f".save_pretrained('DIR')`, copy DIR here and pass --flow-weights DIR (flow.weights=DIR). Cause: {err}"
        ) from None
    return model, _weight_file(source, path.is_dir())


def _weight_file(source: str, local: bool) -> Path | None:
    for name in _WEIGHT_FILES:
        if local:
            candidate = Path(source) / name
            if candidate.is_file():
                return candidate
        else:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, name)
            if isinstance(found, str):
                return Path(found)
    return None


@FLOW_BACKENDS.register("perceiver")
class PerceiverFlow(FlowBackend):
    """Perceiver IO flow. ``config`` (a ``PerceiverConfig``) builds a random model instead of loading
    ``cfg.weights``; ``cfg.train_size``, when set, replaces the model's window (``config.train_size``);
    ``max_tiles`` bounds the tiles per forward pass (memory)."""

    name = "perceiver"

    def __init__(
        self,
        cfg: FlowConfig,
        device: str = "cpu",
        amp: bool = False,
        *,
        config: Any = None,
        max_tiles: int = 8,
    ) -> None:
        from transformers import PerceiverForOpticalFlow

        super().__init__(device, amp)
        if cfg.variant:
            raise ConfigError(
                f"flow.variant={cfg.variant!r}: the perceiver backend has no variants; leave it empty"
            )
        if max_tiles < 1:
            raise ConfigError("max_tiles must be >= 1")
        # Window other than the training size: Fourier positions have no parameters, so the weights
        # load, but features then span a different pixel scale than in training; recorded in provenance.
        overrides = {"train_size": list(cfg.train_size)} if cfg.train_size is not None else {}
        self.weights_file: Path | None = None
        if config is not None:
            config = copy.deepcopy(config)
            for key, value in overrides.items():
                setattr(config, key, value)
            model, self.weights = PerceiverForOpticalFlow(config), None
        else:
            self.weights = cfg.weights or DEFAULT_HUB_ID
            model, self.weights_file = _load_model(self.weights, overrides)
        self.window = tuple(int(v) for v in model.config.train_size)
        if cfg.tile_overlap >= min(self.window):
            raise ConfigError(
                f"flow.tile_overlap={cfg.tile_overlap} must be smaller than the window {self.window}"
            )
        self.overlap = cfg.tile_overlap
        self.scale = cfg.output_scale
        self.max_tiles = max_tiles
        self.window_overridden = bool(overrides)
        self.model = model.eval().to(self.device)
        self.positions = cache_position_encoding(self.model)  # built once, not per forward
        self._sha256: str | None = None

    def run_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """``float32 [n, 2, 27, wh, ww]`` -> ``float32 [n, 2, wh, ww]`` flow in pixels (x, y)."""
        with self.autocast():
            logits = self.model(inputs=tiles).logits  # [n, wh, ww, 2]
        return logits.float().permute(0, 3, 1, 2) * self.scale

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        prev = pinned_to(prev, self.device)
        nxt = pinned_to(nxt, self.device)
        return tiled_flow(self.run_tiles, prev, nxt, self.window, self.overlap, self.max_tiles)

    def provenance(self) -> dict[str, Any]:
        if self.weights_file is not None and self._sha256 is None:
            self._sha256 = sha256_file(self.weights_file)
        prov = super().provenance()
        prov.update(
            weights=self.weights,
            weights_sha256=self._sha256,
            n_params=count_params(self.model),
            notes=(
                f"transformers PerceiverForOpticalFlow, window {self.window[0]}x{self.window[1]}"
                f"{' (overridden by flow.train_size)' if self.window_overridden else ''}, "
                f"tile overlap {self.overlap} px, border-tapered blending, logits x {self.scale}"
                + ("; RANDOM INITIALISATION (config given, no weights)" if self.weights is None else "")
            ),
        )
        return prov
