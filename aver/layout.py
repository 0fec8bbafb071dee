"""The cache contract in code: the one place that says what a feature cache holds.

``cache_layout.md`` documents it for people; this module is what both stages import (numpy and
zarr only, no torch, no extraction stack). Stage one writes through ``aver.store.CacheWriter``,
stage two and ``aver info`` read through ``aver.cache.FeatureCache``, and both use the names, codes
and specs below. A test checks that this module and ``cache_layout.md`` agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYOUT_VERSION = 2  # 2: optional end-to-end inputs (inputs/*); layout 1 stores are still read
READABLE_VERSIONS = (1, 2)
ATTRS_KEY = "aver"  # group attribute holding the provenance JSON
TEMPLATE_KEY = "template"  # "incomplete" while the template is being written (then absent)

# clips/status: the commit marker, written last for each clip.
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}

# folds/split: one row per fold.
TRAIN, VALIDATION, TEST, UNUSED = 0, 1, 2, -1
SPLITS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
SPLIT_CODES = {**SPLITS, "unused": UNUSED}

# Array names (paths inside the store).
CLIP_ID = "clips/id"
SPEAKER = "clips/speaker"
VIDEO = "clips/video"
LABEL = "clips/label"
TARGETS = "clips/targets"
SOFT_LABEL = "clips/soft_label"
STATUS = "clips/status"
ERROR = "clips/error"
NOTE = "clips/note"
DIGEST = "clips/digest"
N_FRAMES = "clips/n_frames"
N_FLOW = "clips/n_flow"
N_AUDIO = "clips/n_audio"
FPS = "clips/fps"
FRAME_FEATURES = "frames/features"
TIMESTAMP = "frames/timestamp"
FACE_BOX = "frames/face_box"
FACE_PROB = "frames/face_prob"
FACE_MASK = "frames/face_mask"
FLOW_FEATURES = "flow/features"
AUDIO_FEATURES = "audio/features"
FOLD_SPLIT = "folds/split"
# End-to-end inputs (layout 2, optional): face crops and the 16 kHz waveform, for models that train
# their backbones (mocanu2023, avtca). They have their own commit marker, so they can be added to a
# store whose features are done.
CROPS = "inputs/crops"
CROP_INDEX = "inputs/crop_index"
N_CROPS = "inputs/n_crops"
WAVE = "inputs/wave"
N_WAVE = "inputs/n_wave"
INPUT_STATUS = "inputs/status"
INPUT_DIGEST = "inputs/digest"
WAVE_SCALE = 32768.0  # inputs/wave holds 16-bit PCM: float = int16 / WAVE_SCALE

# The valid length of each modality of a clip, and the feature array it applies to.
LENGTHS = {"frames": N_FRAMES, "flow": N_FLOW, "audio": N_AUDIO}
FEATURES = {"frames": FRAME_FEATURES, "flow": FLOW_FEATURES, "audio": AUDIO_FEATURES}


@dataclass(frozen=True)
class ArraySpec:
    """One array: dtype, dimension names and, per dimension, the size symbol it must have.

    Size symbols: ``N`` clips, ``T`` frame capacity, ``A`` audio capacity, ``L`` audio layers,
    ``D_image`` / ``D_audio`` feature widths, ``K`` folds, ``K_t`` targets, ``C`` classes, ``4`` a
    literal.
    Inputs (layout 2): ``K_c`` crop frames per clip, ``S_c`` crop side, ``W`` waveform samples.
    ``per_clip`` arrays have one chunk per clip (written by the clip's worker); the others are
    written once, whole, with the template.
    """

    name: str
    dtype: str
    dims: tuple[str, ...]
    sizes: tuple[str, ...]
    fill: Any
    per_clip: bool

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(int(s) if s.isdigit() else int(sizes[s]) for s in self.sizes)


def _spec(name, dtype, dims, sizes, fill, per_clip=True) -> ArraySpec:
    return ArraySpec(name, dtype, tuple(dims), tuple(sizes), fill, per_clip)


ARRAYS: dict[str, ArraySpec] = {
    s.name: s
    for s in (
        _spec(CLIP_ID, "str", ["clip"], ["N"], "", per_clip=False),
        _spec(SPEAKER, "str", ["clip"], ["N"], "", per_clip=False),
        _spec(VIDEO, "str", ["clip"], ["N"], "", per_clip=False),
        _spec(LABEL, "int16", ["clip"], ["N"], -1, per_clip=False),
        _spec(TARGETS, "float32", ["clip", "target"], ["N", "K_t"], float("nan"), per_clip=False),
        _spec(SOFT_LABEL, "float32", ["clip", "class"], ["N", "C"], float("nan"), per_clip=False),
        _spec(FOLD_SPLIT, "int8", ["fold", "clip"], ["K", "N"], UNUSED, per_clip=False),
        _spec(STATUS, "int8", ["clip"], ["N"], PENDING),
        _spec(ERROR, "str", ["clip"], ["N"], ""),
        _spec(NOTE, "str", ["clip"], ["N"], ""),
        _spec(DIGEST, "str", ["clip"], ["N"], ""),
        _spec(N_FRAMES, "int32", ["clip"], ["N"], 0),
        _spec(N_FLOW, "int32", ["clip"], ["N"], 0),
        _spec(N_AUDIO, "int32", ["clip"], ["N"], 0),
        _spec(FPS, "float32", ["clip"], ["N"], 0.0),
        _spec(FRAME_FEATURES, "float16", ["clip", "frame", "feature"], ["N", "T", "D_image"], 0.0),
        _spec(TIMESTAMP, "float32", ["clip", "frame"], ["N", "T"], 0.0),
        _spec(FACE_BOX, "float32", ["clip", "frame", "coord"], ["N", "T", "4"], 0.0),
        _spec(FACE_PROB, "float32", ["clip", "frame"], ["N", "T"], 0.0),
        _spec(FACE_MASK, "bool", ["clip", "frame"], ["N", "T"], False),
        _spec(FLOW_FEATURES, "float16", ["clip", "flow_frame", "feature"], ["N", "T", "D_image"], 0.0),
        _spec(
            AUDIO_FEATURES,
            "float16",
            ["clip", "audio_frame", "layer", "feature"],
            ["N", "A", "L", "D_audio"],
            0.0,
        ),
        _spec(CROPS, "uint8", ["clip", "crop_frame", "y", "x", "rgb"], ["N", "K_c", "S_c", "S_c", "3"], 0),
        _spec(CROP_INDEX, "int32", ["clip", "crop_frame"], ["N", "K_c"], -1),
        _spec(N_CROPS, "int32", ["clip"], ["N"], 0),
        _spec(WAVE, "int16", ["clip", "sample"], ["N", "W"], 0),
        _spec(N_WAVE, "int32", ["clip"], ["N"], 0),
        _spec(INPUT_STATUS, "int8", ["clip"], ["N"], PENDING),
        _spec(INPUT_DIGEST, "str", ["clip"], ["N"], ""),
    )
}
# The end-to-end inputs: all present or all absent (a store extracted without inputs).
INPUT_ARRAYS = (CROPS, CROP_INDEX, N_CROPS, WAVE, N_WAVE, INPUT_STATUS, INPUT_DIGEST)
INPUT_DATA = (CROPS, CROP_INDEX, WAVE)  # per-clip time-axis data (sharded like features when packed)
# Present only when the corpus has targets / folds / soft (consensus) labels; clips/note only in
# stores written by aver >= 0.2, clips/digest by aver >= 0.3.
OPTIONAL = (TARGETS, FOLD_SPLIT, NOTE, SOFT_LABEL, DIGEST, *INPUT_ARRAYS)

# Per-clip data arrays: reset to their fill value when a clip fails.
CLIP_DATA = (FRAME_FEATURES, FLOW_FEATURES, AUDIO_FEATURES, TIMESTAMP, FACE_BOX, FACE_PROB, FACE_MASK)
CLIP_SCALARS = (N_FRAMES, N_FLOW, N_AUDIO, FPS)


# What a reader accepts, so that an edited or hostile store cannot make it allocate without bound.
LIMITS = {
    "N": 10_000_000,  # clips
    "T": 1_000_000,  # frames per clip (11 h at 25 fps)
    "A": 2_000_000,  # audio frames per clip (11 h at 50 Hz)
    "L": 1_024,  # stored audio layers
    "D_image": 65_536,
    "D_audio": 65_536,
    "K": 1_000,  # folds
    "K_t": 1_000,  # continuous targets
    "C": 100_000,  # classes
    "K_c": 1_000_000,  # crop frames per clip
    "S_c": 1_024,  # crop side
    "W": 700_000_000,  # waveform samples per clip (12 h at 16 kHz)
}
MAX_CHUNK_BYTES = 2**31  # one clip's chunk of any array: a read decodes the whole chunk


def sizes_from_meta(meta: dict[str, Any], n_clips: int, n_folds: int = 0) -> dict[str, int]:
    """The size of every symbol, from a store's ``attrs.aver`` (``dims``, ``capacity``, ``targets``)."""
    dims, cap = meta["dims"], meta["capacity"]
    return {
        "N": n_clips,
        "T": int(cap["frames"]),
        "A": int(cap["audio"]),
        "L": int(dims["audio_layers"]),
        "D_image": int(dims["image"]),
        "D_audio": int(dims["audio"]),
        "K": n_folds,
        "K_t": len(meta.get("targets") or []),
        "C": len(meta.get("classes") or []),
        **input_sizes(meta),
    }


def input_sizes(meta: dict[str, Any]) -> dict[str, int]:
    """``K_c``, ``S_c``, ``W`` from ``attrs.aver.inputs`` (all 0 for a store without inputs)."""
    inputs = meta.get("inputs") or {}
    return {
        "K_c": int(inputs.get("crop_frames_capacity", 0)),
        "S_c": int(inputs.get("crop_size", 0)),
        "W": int(inputs.get("wave_capacity", 0)),
    }


def open_root(url: str, mode: str, storage_options: dict | None = None):
    """The zarr v3 group at a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``)."""
    import zarr

    if str(url).endswith(".zip") and "://" not in str(url):  # a packed copy as one zip file
        if mode != "r":
            from aver.errors import CacheError

            raise CacheError(f"{url}: a zipped cache is read-only: extract into a .zarr folder")
        import zipfile

        try:
            return zarr.open_group(zarr.storage.ZipStore(url, mode="r"), mode="r", zarr_format=3)
        except zipfile.BadZipFile as e:
            from aver.errors import CacheError

            raise CacheError(
                f"{url}: not a readable zip file ({e}): the packed copy is truncated or damaged; copy it "
                "again, or pack it anew (aver cache pack STORE DEST.zip)"
            ) from None
    remote = "://" in str(url)  # storage options belong to URLs (a local path beside a URL ignores them)
    return zarr.open_group(
        url, mode=mode, storage_options=(storage_options or None) if remote else None, zarr_format=3
    )


def has_array(g, name: str) -> bool:
    """Whether the store's group ``g`` holds array ``name`` (optional arrays may be absent)."""
    group, _, leaf = name.partition("/")
    if not leaf:  # a root array (the xarray coordinates ``clip``, ``fold``, ``layer``)
        return group in g
    return group in g and leaf in g[group]


def store_exists(url: str, storage_options: dict | None = None) -> bool:
    import zarr

    try:
        open_root(url, "r", storage_options)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return False
    return True


def store_url(cache: str, dataset: str) -> str:
    """``<cache>/<dataset>.zarr`` for a folder or an fsspec URL (``s3://bucket/prefix``)."""
    from pathlib import Path

    return f"{cache.rstrip('/')}/{dataset}.zarr" if "://" in cache else str(Path(cache) / f"{dataset}.zarr")
