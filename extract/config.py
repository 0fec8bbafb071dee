"""Extraction configuration: dataclasses are the single source of truth.

Everything that changes the numbers written into a cache lives in ``ExtractConfig`` minus its
``runtime`` part; its canonical JSON is hashed (``config_hash``) and stored in the cache, and a rerun
with a different hash refuses to mix results. ``RuntimeConfig`` (device, batch sizes, workers) is
recorded per run but not hashed: it changes how fast, not what.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from aver.errors import ConfigError
from aver.overrides import from_dict
from aver.utils import check_device, json_hash

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Fields added after the first caches were written, with the value that reproduces what caches
# written before them hold: a field at that value is left out of the hash (see ``hashed_dict``), so
# those caches keep their hash and can be resumed with ``--set`` of that value.
LATE_FIELDS = {
    ("audio", "window_s"): 30.0,
    ("audio", "context_s"): 5.0,
    ("audio", "fragment_s"): 0.0,
    ("audio", "fragment_hop_s"): 0.0,
    ("face", "detect_every"): 1,
    ("flow", "sigma"): "pixel",
}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class FaceConfig:
    """MTCNN detection, single-face tracking, box smoothing and cropping."""

    min_face_size: int = 40  # pixels, at detection resolution
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P/R/O-net
    factor: float = 0.709  # image pyramid scale step
    min_prob: float = 0.90  # detections below this are ignored
    detect_max_side: int = 640  # frames are downscaled to this longest side for detection
    detect_every: int = 1  # detect on every k-th frame; boxes in between are interpolated (as gaps)
    smooth_window: int = 9  # frames, centred moving average of box centre and size (odd)
    margin: float = 0.15  # fraction of the box side added on every side before squaring
    crop_size: int = 224  # output crops are crop_size x crop_size RGB

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(t) for t in self.thresholds)
        _check(len(self.thresholds) == 3, "face.thresholds needs three values (P, R, O nets)")
        _check(self.min_face_size >= 8, "face.min_face_size must be >= 8 pixels")
        _check(0.0 < self.factor < 1.0, "face.factor must be in (0, 1)")
        _check(0.0 <= self.min_prob <= 1.0, "face.min_prob must be in [0, 1]")
        _check(self.smooth_window >= 1 and self.smooth_window % 2 == 1, "face.smooth_window must be odd")
        _check(self.margin >= 0.0, "face.margin must be >= 0")
        _check(self.crop_size >= 16, "face.crop_size must be >= 16")
        _check(self.detect_max_side >= 64, "face.detect_max_side must be >= 64")
        _check(self.detect_every >= 1, "face.detect_every must be >= 1")


@dataclass
class FlowConfig:
    """Optical flow between face crops, its std normalisation (one sigma per clip, or per pixel) and its
    image encoding."""

    backend: str = "dis"  # registry key: dis | raft | perceiver
    variant: str = ""  # raft: large | small; dis: ultrafast | fast | medium; perceiver: unused
    weights: str | None = None  # raft: local .pth/.safetensors; perceiver: hub id or local folder
    allow_pickle: bool = False  # permit unpickling a third-party weight file (executes code)
    iters: int = 12  # raft refinement iterations
    train_size: tuple[int, int] | None = None  # perceiver window; None = the model's config.train_size
    tile_overlap: int = 32  # perceiver: overlap between tiles, pixels
    output_scale: float = 20.0  # perceiver: model output x this = pixels (as the public demo)
    window: int = 1  # flow between frame t and t + window (paper Table 4)
    stride: int = 1  # one flow map every `stride` frames (paper Table 4)
    sigma: str = "clip"  # std normalisation: one sigma per clip ("clip") or per pixel over time ("pixel")
    eps: float = 1e-3  # added to the std before dividing
    image_clip: float = 3.0  # normalised magnitude shown at full brightness in the flow image

    def __post_init__(self) -> None:
        if self.train_size is not None:
            self.train_size = tuple(int(v) for v in self.train_size)
            _check(len(self.train_size) == 2, "flow.train_size needs (height, width)")
        _check(self.window >= 1, "flow.window must be >= 1")
        _check(self.stride >= 1, "flow.stride must be >= 1")
        _check(self.iters >= 1, "flow.iters must be >= 1")
        _check(self.eps > 0, "flow.eps must be > 0")
        _check(self.sigma in ("clip", "pixel"), f"flow.sigma must be 'clip' or 'pixel', not {self.sigma!r}")
        _check(self.image_clip > 0, "flow.image_clip must be > 0")
        _check(self.tile_overlap >= 0, "flow.tile_overlap must be >= 0")


@dataclass
class ImageEncoderConfig:
    """EfficientNet-B2 (timm) on face crops and on flow images; classifier removed."""

    arch: str = "tf_efficientnet_b2"  # timm model name
    weights: str | None = None  # local file: .safetensors, a state_dict .pt/.pth, or a pickled module
    allow_pickle: bool = False  # the Savchenko enet_b2_*.pt files are pickled whole modules
    input_size: int = 224  # paper 224; the model's native size is 260
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        _check(self.input_size >= 32, "image.input_size must be >= 32")
        _check(len(self.mean) == 3 and len(self.std) == 3, "image.mean/std need 3 values")


@dataclass
class AudioEncoderConfig:
    """wav2vec2 (transformers) on 16 kHz mono audio.

    ``layers`` are ``hidden_states`` indices, or a slice ``"start:stop:step"`` for a layer sweep
    (``"0:25:4"`` keeps 0, 4, ..., 24), resolved here so the config records the indices.
    ``fragment_s`` > 0 is DE-III's fragment-level reading: the clip is split into fragments of
    ``fragment_s`` every ``fragment_hop_s``, each encoded on its own and mean-pooled to one vector
    (one stored audio frame per fragment; the last fragment ends at the clip's end, so no tail is
    dropped). 0 (default) encodes the whole clip and stores wav2vec2's 50 Hz frames.
    """

    model: str = "facebook/wav2vec2-large-robust"  # hub id or local folder (save_pretrained layout)
    layers: tuple[int, ...] = (-1,)  # hidden_states indices kept (0 = CNN projection, -1 = last)
    sample_rate: int = 16000
    window_s: float = 30.0  # longer audio is encoded in overlapping windows (attention is quadratic)
    context_s: float = 5.0  # each window's frames see at least this much audio on both sides
    fragment_s: float = 0.0  # > 0: fragment-level encoding (the paper's reading), seconds per fragment
    fragment_hop_s: float = 0.0  # seconds between fragment starts (<= fragment_s: no audio skipped)

    def __post_init__(self) -> None:
        self.layers = _layer_list(self.layers)
        _check(len(self.layers) >= 1, "audio.layers needs at least one layer index")
        _check(self.sample_rate == 16000, "wav2vec2 models expect audio.sample_rate = 16000")
        _check(
            self.context_s >= 0 and self.window_s > 2 * self.context_s,
            "audio.window_s must exceed 2 * context_s",
        )
        if self.fragment_s or self.fragment_hop_s:
            _check(
                self.fragment_s >= 0.05 and 0 < self.fragment_hop_s <= self.fragment_s,
                "audio fragments need audio.fragment_s >= 0.05 and 0 < audio.fragment_hop_s <= fragment_s "
                f"(got {self.fragment_s} / {self.fragment_hop_s}); a hop longer than a fragment would skip audio",
            )
            _check(self.fragment_s <= self.window_s, "audio.fragment_s must not exceed audio.window_s")


def _layer_list(layers: Any) -> tuple[int, ...]:
    """``audio.layers`` as indices: a list of ints, one int, or a slice ``"start:stop[:step]"``."""
    if isinstance(layers, str):
        parts = layers.split(":")
        try:
            if len(parts) == 1:
                return (int(parts[0]),)
            _check(len(parts) in (2, 3) and parts[1] != "", "")
            return tuple(range(*(int(p) if p else d for p, d in zip(parts, (0, 0, 1), strict=False))))
        except (ValueError, ConfigError):
            raise ConfigError(
                f"audio.layers={layers!r}: give indices (e.g. [12, -1]) or a slice start:stop:step "
                "(e.g. 0:25:4, stop required)"
            ) from None
    if isinstance(layers, int):
        return (layers,)
    return tuple(int(v) for v in layers)


# Batch sizes per kind of device, for the runtime fields left unset (None). Measured on a 2-core
# Xeon (bench/RESULTS.md): EfficientNet-B2 runs ~22 ms per image at batch 8 in channels_last and
# ~44 at batch 32 (caches thrash); a GPU wants large fixed-shape batches.
DEVICE_DEFAULTS = {
    "cpu": {
        "image_batch": 8,
        "flow_batch": 8,
        "detect_batch": 16,
        "audio_batch": 1,  # clip by clip: bit-stable whatever the grouping (see AudioEncoder.encode_many)
        "threads": 0,  # torch's default (all cores per op, ops serialised); 1 overlaps instead
        "amp": False,  # float32; true: bf16 with AMX, 1.15x faster end to end (bench/RESULTS.md)
        "prefetch": 2,
        "decode_once_mb": 32,  # a 4K clip stays within one frame + one crop chunk (issue 18)
    },
    "cuda": {
        "image_batch": 64,
        "flow_batch": 16,
        "detect_batch": 32,
        "audio_batch": 32,
        "threads": 0,
        "amp": True,
        "prefetch": 4,
        "decode_once_mb": 512,
    },
}


@dataclass
class RuntimeConfig:
    """How a run executes. Recorded per run, not hashed: it must not change the stored numbers.

    Batch sizes left at None take the device's defaults (``DEVICE_DEFAULTS``) when a run starts
    (``resolved``); the run log records the values used.
    """

    device: str = "cpu"
    amp: bool | None = None  # bf16 autocast: default on CUDA; off on the CPU (float32), where true uses AMX
    # TF32 tensor-core matmuls and convolutions on CUDA when amp is off (torch leaves cuDNN's on by
    # default): false keeps float32 exact; true is faster and ~1e-3 off. Set explicitly every run.
    tf32: bool = False
    image_batch: int | None = None  # images per encoder batch (fixed size; the last one is padded)
    flow_batch: int | None = None  # frame pairs per flow batch
    detect_batch: int | None = None  # frames per MTCNN call
    audio_batch: int | None = None  # clips (or fragments) per wav2vec2 batch, sorted by length across a group
    # torch intra-op threads during a run (0: torch's default). With 1 on a CPU, the decode-ahead
    # threads (decoding, detection, cropping, wav2vec2) and the image encoders run at once on
    # different cores with bit-stable results (a single-threaded kernel gives the same bits however
    # busy the machine is); otherwise model compute is serialised by a lock. On 2 cores the default
    # is faster (bench/RESULTS.md); on many-core CPUs, 1 thread with --workers N is the option.
    threads: int | None = None
    decode_batch: int = 64  # frames per detection/crop block (frames are decoded one at a time)
    group_frames: int = 1024  # clips are packed into groups of about this many frames
    stream_frames: int = 256  # longer clips are streamed through temporary files (flat memory)
    stream_window: int = 128  # frames (or flow pairs) per model window of a streamed clip
    # threads preparing clips (decode, detect, crop) ahead of the models, 2x clips in flight;
    # None: the device's default (more on CUDA, where decoding and MTCNN would starve the GPU)
    prefetch: int | None = None
    # a short clip's decoded frames are kept from the detection pass for the crop pass (one decode)
    # while they fit in this many MiB; None: the device's default (issue 21 #7)
    decode_once_mb: int | None = None
    workers: int = 0  # 0: this process; N: a local Dask cluster of N workers
    scheduler: str | None = None  # address of a running Dask scheduler (one worker per GPU)

    def __post_init__(self) -> None:
        check_device(self.device)
        for name in (
            "image_batch",
            "flow_batch",
            "detect_batch",
            "audio_batch",
            "decode_batch",
            "group_frames",
            "stream_frames",
            "stream_window",
        ):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"runtime.{name} must be >= 1")
        _check(self.threads is None or self.threads >= 0, "runtime.threads must be >= 0 (0: torch's default)")
        _check(
            (self.prefetch is None or self.prefetch >= 0) and self.workers >= 0,
            "runtime.prefetch/workers must be >= 0",
        )
        _check(self.decode_once_mb is None or self.decode_once_mb >= 0, "runtime.decode_once_mb must be >= 0")

    def resolved(self, device: str | None = None) -> RuntimeConfig:
        """A copy with every unset batch size taken from the defaults of ``device`` (default: its own)."""
        kind = "cuda" if (device or self.device).startswith("cuda") else "cpu"
        unset = {k: v for k, v in DEVICE_DEFAULTS[kind].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset)


@dataclass
class InputsConfig:
    """End-to-end inputs stored beside the features (``inputs/*``, layout 2): face crops and the
    waveform, for models that train their own backbones (``mocanu2023``, ``avtca``).

    Not part of ``config_hash``: they are recorded in ``attrs.aver.inputs`` and can be added to a
    store whose features are done (only what is missing is filled). Crops are the pipeline's own
    crops (the smoothed track at ``face.crop_size``), resized with antialiasing to ``crop_size``.
    """

    crops: bool = False
    crop_frames: int = 0  # frames kept per clip, uniformly sampled; 0 keeps every frame
    crop_size: int = 112  # side of the stored crops (paper systems: 224; 112 is 4x smaller on disk)
    wave: bool = False  # the 16 kHz mono waveform as 16-bit PCM

    def __post_init__(self) -> None:
        _check(self.crop_frames >= 0, "inputs.crop_frames must be >= 0 (0 keeps every frame)")
        _check(16 <= self.crop_size <= 1024, "inputs.crop_size must be in 16..1024")

    @property
    def any(self) -> bool:
        return self.crops or self.wave


@dataclass
class ExtractConfig:
    """Everything that defines a cache. ``config_hash`` covers all but ``runtime``."""

    dataset: str
    preset: str = "tiny"
    face: FaceConfig = field(default_factory=FaceConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    max_seconds: float | None = None  # clips are cut to this length (None: whole clip)
    min_audio_ratio: float = 0.5  # audio shorter than this fraction of the video is a failure
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)

    def __post_init__(self) -> None:
        _check(self.max_seconds is None or self.max_seconds > 0, "max_seconds must be > 0")
        _check(0.0 <= self.min_audio_ratio <= 1.0, "min_audio_ratio must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> ExtractConfig:
        """A copy whose runtime batch sizes are set for its device (see ``RuntimeConfig.resolved``)."""
        return dataclasses.replace(self, runtime=self.runtime.resolved())

    def hashed_dict(self) -> dict[str, Any]:
        d = self.to_dict()
        d.pop("runtime")
        d.pop("inputs")  # recorded in attrs.aver.inputs: inputs can be added to a finished store
        # Fields added after caches existed are hashed only when set away from their defaults, so
        # a cache written before they existed keeps its hash and can be resumed.
        for (section, key), legacy in LATE_FIELDS.items():
            if d[section][key] == legacy:
                del d[section][key]
        if self.precision() != "fp32":  # caches made before it was hashed are float32 (CPU only)
            d["precision"] = self.precision()
        return d

    def precision(self) -> str:
        """The arithmetic the stored numbers come from: ``bf16`` (autocast, ``runtime.amp``, the
        default on CUDA), ``tf32`` (``runtime.tf32`` with amp off) or ``fp32``. Features differ by
        1-5 % between bf16 and fp32, so it is part of the hash (issue 21 #4): a cache resumed on
        another device with another precision is refused, not silently mixed."""
        runtime = self.runtime.resolved()
        return "bf16" if runtime.amp else "tf32" if runtime.tf32 else "fp32"

    def config_hash(self) -> str:
        return json_hash(self.hashed_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExtractConfig:
        """From ``to_dict`` or a stored ``hashed_dict``, whose ``precision`` sets ``runtime.amp`` and
        ``runtime.tf32`` (a cache's own config rebuilt for ``aver predict`` computes as it did)."""
        d = dict(d)
        precision = d.pop("precision", None)
        if precision is not None:
            if precision not in ("bf16", "tf32", "fp32"):
                raise ConfigError(f"precision {precision!r}: one of bf16, tf32, fp32")
            d["runtime"] = {
                **(d.get("runtime") or {}),
                "amp": precision == "bf16",
                "tf32": precision == "tf32",
            }
        return from_dict(cls, d)
