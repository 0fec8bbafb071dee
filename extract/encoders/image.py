"""Headless timm image encoder (EfficientNet-B2 by default) for face crops and flow images."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aver.errors import ConfigError
from aver.utils import autocast

from ..config import ImageEncoderConfig
from ..faces import to_device
from .weights import load_state_dict, sha256_file, state_dict_sha256

# Classifier parameters: the encoder is built with num_classes=0, so a checkpoint's head never fits.
_HEAD_PREFIXES = ("classifier.", "fc.", "head.", "head_dist.", "last_linear.")
# Architectures tried, on the meta device, to tell the user what a non-matching file was made for.
_GUESS_ARCHS = (
    "test_efficientnet",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "mobilenetv3_large_100",
    "resnet18",
    "resnet34",
    "resnet50",
    "convnext_tiny",
)


def _create(arch: str, **kwargs: Any) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ConfigError(f"image.arch={arch!r} is not a timm model ({err})") from err


def guess_arch(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """timm names (from a short list of common backbones) whose headless tensors all match ``state_dict``.

    ``efficientnet_bN`` and ``tf_efficientnet_bN`` have identical tensor names and shapes, so a match
    on one stands for both. Models are built on the meta device: no memory, a few ms each.
    """
    body = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    found = []
    for arch in _GUESS_ARCHS:
        try:
            with torch.device("meta"):
                ref = _create(arch).state_dict()
        except (ConfigError, RuntimeError, NotImplementedError):
            continue
        ref_shapes = {k: tuple(v.shape) for k, v in ref.items() if not k.endswith("num_batches_tracked")}
        wanted = {k: s for k, s in body.items() if not k.endswith("num_batches_tracked")}
        if ref_shapes == wanted:
            found.append(f"{arch} (or tf_{arch})" if arch.startswith("efficientnet_") else arch)
    return found


def _check_and_filter(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], cfg: ImageEncoderConfig
) -> dict[str, torch.Tensor]:
    """Drop classifier tensors that cannot fit a headless model; raise if the backbone does not match."""
    expected = model.state_dict()

    def fits(k: str) -> bool:
        return k in expected and tuple(expected[k].shape) == tuple(sd[k].shape)

    sd = {k: v for k, v in sd.items() if not (k.startswith(_HEAD_PREFIXES) and not fits(k))}
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in sd if k in expected and not fits(k)
    ]
    if not (missing or unexpected or mismatched):
        return sd
    guesses = guess_arch(sd)
    seems = (
        f"it seems to be for {', '.join(guesses)}"
        if guesses
        else "it matches none of the common timm backbones checked"
    )
    parts = [
        f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
        f"{len(mismatched)} with other shapes (e.g. {mismatched[:3]})" if mismatched else "",
    ]
    raise ConfigError(
        f"{cfg.weights}: weights do not fit image.arch={cfg.arch!r}: "
        f"{'; '.join(p for p in parts if p)}; {seems}. Set image.arch to the model the file was saved from."
    )


# Weight files whose provenance is known from their name, and the timm family they were saved
# from. The two EfficientNet families share parameter names and shapes, so a mismatch loads
# without error and gives features ~71 % away from the right ones: it is refused instead.
KNOWN_WEIGHTS = (
    # Savchenko's face models (EmotiEffLib / HSEmotion): tf_efficientnet_b*_ns (same padding, BN eps 1e-3)
    (re.compile(r"^(state_vggface2_enet\d|enet_b\d_\d+(_best|_vgaf)?)", re.I), "tf_efficientnet_"),
)


def check_known_provenance(path: Path, arch: str) -> None:
    """Refuse a weight file whose known provenance contradicts ``arch`` (see ``KNOWN_WEIGHTS``)."""
    for pattern, family in KNOWN_WEIGHTS:
        # only the known collision is refused: the same file in the other EfficientNet family
        if pattern.match(path.name) and arch.startswith("efficientnet_"):
            raise ConfigError(
                f"{path.name} is one of Savchenko's face models, saved from timm's {family}* family "
                f"(TF 'same' padding, BN eps 1e-3), but image.arch is {arch!r}: with these weights it would "
                f'load silently and give features ~71 % off. Use --set image.arch="{family}b2" (the paper preset).'
            )


class ImageEncoder:
    """A timm backbone without its classifier: images ``[B, 3, H, W]`` -> embeddings ``[B, dim]``.

    Built with random weights unless ``cfg.weights`` names a local file (any format that
    ``load_state_dict`` reads). Frozen, in eval mode, channels_last; optional autocast on CUDA.
    """

    def __init__(self, cfg: ImageEncoderConfig, device: str = "cpu", amp: bool = False) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp = bool(amp)  # bf16 autocast on CUDA, and on the CPU when asked (runtime.amp=true)
        if cfg.weights:
            check_known_provenance(Path(cfg.weights), cfg.arch)
        model = _create(cfg.arch)
        self._weights_sha256: str | None = None
        if cfg.weights:
            sd = load_state_dict(cfg.weights, allow_pickle=cfg.allow_pickle)
            # Hashed at load time, so the provenance names the bytes actually loaded.
            self._weights_sha256 = sha256_file(Path(cfg.weights).expanduser())
            model.load_state_dict(_check_and_filter(model, sd, cfg), strict=False)
        # channels_last on every device: ~1.3-1.6x faster on CPU (oneDNN) and on CUDA (tensor cores)
        model.eval().requires_grad_(False).to(self.device).to(memory_format=torch.channels_last)
        self.model = model
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._provenance: dict[str, Any] | None = None

    @property
    def dim(self) -> int:
        """Embedding width (``num_features``): 1408 for EfficientNet-B2."""
        return int(self.model.num_features)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.amp, cpu=True)

    @contextlib.contextmanager
    def _tuned(self) -> Any:
        """cuDNN autotuning (``cudnn.benchmark``) for the forwards of a CUDA encoder (issue 21):
        every forward has one shape (``encode_batched`` pads the last batch; crops and flow images
        are ``input_size`` squares), so the first picks the fastest convolutions and the others
        reuse them. Scoped to the forward, so MTCNN's varying shapes are not each re-tuned; the CPU
        is untouched (no flag is read or written)."""
        if self.device.type != "cuda":
            yield
            return
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` 0..255 or float 0..1 ``[B, 3, H, W]`` -> normalised float32 at ``input_size`` on device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W]; got shape {tuple(images.shape)}")
        # Convert after the transfer: uint8 is a quarter of the bytes to move. A host batch bound
        # for CUDA is pinned first, so the copy is asynchronous (faces.to_device, issue 21 #8).
        x = to_device(images, self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        size = self.cfg.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``__call__`` without the copy back: ``[B, dim]`` float32 on the encoder's device (an
        inference tensor: read it, or copy it before modifying it in place)."""
        if images.shape[0] == 0:
            return torch.zeros(0, self.dim, device=self.device)
        with torch.inference_mode(), self._autocast(), self._tuned():
            return self.model(self._prepare(images)).float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Encode one batch.

        images: ``[B, 3, H, W]``, float32 in [0, 1] or uint8 in [0, 255], any device; resized
        (bilinear, antialiased) to ``cfg.input_size`` square when needed.
        Returns ``[B, dim]`` float32 on CPU.
        """
        # clone() outside inference mode: callers may modify the result in place.
        return self.encode(images).to("cpu").clone()

    def encode_batched(self, images: torch.Tensor | np.ndarray, batch_size: int) -> torch.Tensor:
        """Encode ``[N, 3, H, W]`` images in forwards of exactly ``batch_size`` images.

        The last partial batch is padded by repeating its last image and the padding is dropped
        afterwards, so every forward has one shape and an image's embedding does not depend on N
        or on how clips were grouped. Returns ``[N, dim]`` float32 on CPU, copied back once for
        all the batches (on a GPU a copy per batch would wait for each forward: issue 21 #8).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        n = images.shape[0]
        out = []
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            real = chunk.shape[0]
            if real < batch_size:
                pad = chunk[-1:].expand(batch_size - real, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            out.append(self.encode(chunk)[:real])
        # cat outside inference mode: a normal tensor the caller may modify in place
        return torch.cat(out).cpu() if out else torch.zeros(0, self.dim)

    def provenance(self) -> dict[str, Any]:
        """What made these embeddings: arch, weights file and sha256 (or a hash of the random init), sizes."""
        if self._provenance is None:
            prov: dict[str, Any] = {"arch": self.cfg.arch, "weights": self.cfg.weights}
            if self.cfg.weights:
                prov["weights_sha256"] = self._weights_sha256
                prov["random_init"] = False
            else:
                prov["weights_sha256"] = state_dict_sha256(self.model.state_dict())
                prov["random_init"] = True
            prov.update(
                input_size=self.cfg.input_size,
                mean=list(self.cfg.mean),
                std=list(self.cfg.std),
                dim=self.dim,
                n_params=sum(p.numel() for p in self.model.parameters()),
            )
            self._provenance = prov
        return dict(self._provenance)
