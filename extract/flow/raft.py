"""RAFT optical flow (torchvision ``raft_large`` / ``raft_small``).

``cfg.weights`` is one of: ``None`` (random initialisation: for tests and timing only), a local
``.safetensors`` file, a local ``.pth``/``.pt`` state_dict (loaded with ``weights_only=True``; a
pickled module needs ``flow.allow_pickle=true``), or a torchvision enum name such as
``Raft_Large_Weights.C_T_SKHT_V2``, read from torchvision's download cache (``$TORCH_HOME/hub/checkpoints``)
and never downloaded here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from aver.errors import ConfigError, MissingWeightsError
from aver.utils import pinned_to

from ..config import FlowConfig
from .base import FLOW_BACKENDS, FlowBackend, count_params, pick_variant, sha256_file

_ENUM_RE = re.compile(r"^(Raft_(Large|Small)_Weights)\.(\w+)$")


def load_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A RAFT weight file as ``{name: tensor}`` on the CPU: the encoders' loader (safetensors, a
    state_dict through ``weights_only=True``, unwrapping nestings; pickles only with
    ``flow.allow_pickle``)."""
    from ..encoders.weights import load_state_dict as load_weights

    return load_weights(path, allow_pickle, section="flow")


def _enum_weights(name: str, variant: str) -> tuple[Any, str]:
    """Resolve a torchvision enum name to (enum member, variant); check it matches ``variant``."""
    from torchvision.models import optical_flow

    match = _ENUM_RE.match(name)
    if match is None:
        raise ConfigError(
            f"flow.weights {name!r} is neither an existing file nor a torchvision enum name "
            "like 'Raft_Large_Weights.C_T_SKHT_V2'"
        )
    enum_cls = getattr(optical_flow, match.group(1))
    member = match.group(3)
    if member not in enum_cls.__members__:
        raise ConfigError(
            f"{match.group(1)} has no member {member!r}; choose one of: {', '.join(enum_cls.__members__)}"
        )
    enum_variant = match.group(2).lower()
    if variant and variant != enum_variant:
        raise ConfigError(f"flow.weights {name!r} are for raft {enum_variant}, but flow.variant={variant!r}")
    return enum_cls[member], enum_variant


def torchvision_cache_path(weights: Any) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file of a torchvision weights enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


# RAFT's 4-level correlation pyramid needs feature maps >= 16 px, i.e. images >= 128 px.
RAFT_MIN_SIDE = 128


def pad_for_raft(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad ``[B, C, H, W]`` at the bottom/right to sides divisible by 8 and >= 128."""
    h, w = x.shape[-2:]
    th = max(RAFT_MIN_SIDE, h + (-h) % 8)
    tw = max(RAFT_MIN_SIDE, w + (-w) % 8)
    if (th, tw) == (h, w):
        return x
    return F.pad(x, (0, tw - w, 0, th - h), mode="replicate")


@FLOW_BACKENDS.register("raft")
class RAFTFlow(FlowBackend):
    """torchvision RAFT; ``cfg.variant`` large | small (default large), ``cfg.iters`` refinement steps."""

    name = "raft"

    def __init__(self, cfg: FlowConfig, device: str = "cpu", amp: bool = False) -> None:
        from torchvision.models.optical_flow import raft_large, raft_small

        super().__init__(device, amp)
        self.iters = cfg.iters
        self.weights = cfg.weights
        self.weights_file: Path | None = None
        self._sha256: str | None = None
        enum = None
        if cfg.weights is not None and not Path(cfg.weights).is_file() and _ENUM_RE.match(cfg.weights):
            enum, inferred = _enum_weights(cfg.weights, cfg.variant)
            self.variant = inferred
        else:
            self.variant = pick_variant(cfg, ("large", "small"), "large")
        model = (raft_large if self.variant == "large" else raft_small)(weights=None, progress=False)
        if cfg.weights is not None:
            self.weights_file = self._locate(cfg.weights, enum)
            self._load(model, load_state_dict(self.weights_file, cfg.allow_pickle))
        self.model = model.eval().to(self.device)

    def _locate(self, weights: str, enum: Any) -> Path:
        if enum is None:
            if not Path(weights).is_file():
                raise MissingWeightsError(
                    f"flow.weights={weights!r}: no such file; give a .safetensors/.pth/.pt file or a "
                    "torchvision enum name like 'Raft_Large_Weights.C_T_SKHT_V2'"
                )
            return Path(weights)
        path = torchvision_cache_path(enum)
        if not path.is_file():
            raise MissingWeightsError(
                f"flow.weights={weights!r}: torchvision's copy {path} is not on this machine and nothing is "
                f'downloaded here. On a machine with internet run `python -c "from torchvision.models.'
                f'optical_flow import {enum.__class__.__name__} as W; W.{enum.name}.get_state_dict()"` and '
                f"copy {path.name} into {path.parent} (or set TORCH_HOME), or pass the file path as flow.weights."
            )
        return path

    def _load(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ConfigError(
                f"{self.weights_file}: not a torchvision raft_{self.variant} state_dict "
                f"({str(err).splitlines()[0]} ...)"
            ) from None

    def _flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        h, w = prev.shape[-2:]
        # RAFT was trained on images scaled to [-1, 1]; its feature grid is 1/8 of the image.
        pair = pinned_to(torch.cat([prev, nxt]), self.device).float().div_(127.5).sub_(1.0)
        pair = pad_for_raft(pair)
        a, b = pair.chunk(2)
        with self.autocast():
            preds = self.model(a, b, num_flow_updates=self.iters)
        return preds[-1][..., :h, :w].float()

    def _weights_sha256(self) -> str | None:
        if self.weights_file is not None and self._sha256 is None:
            self._sha256 = sha256_file(self.weights_file)
        return self._sha256

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov.update(
            weights=self.weights,
            weights_sha256=self._weights_sha256(),
            n_params=count_params(self.model),
            notes=(
                f"torchvision raft_{self.variant}, num_flow_updates={self.iters}, last prediction; "
                "input [-1,1], replicate-padded to a multiple of 8 and >= 128 px"
                + ("; RANDOM INITIALISATION (no weights)" if self.weights is None else "")
            ),
        )
        return prov
