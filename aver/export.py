"""``aver cache export``: the committed clips of a cache (or of a fold's splits) as one plain HDF5 file.

For MATLAB (``h5read``), Keras / TensorFlow and h5py users who do not read Zarr. The file holds
plain datasets at its root, no groups, references or compound types:

- ``frames`` ``[N, T, D_image]``, ``flow`` ``[N, P, D_image]``, ``audio`` ``[N, A, L, D_audio]``:
  **padded** arrays (zeros past each clip's valid rows) with the valid lengths ``n_frames``,
  ``n_flow``, ``n_audio`` ``[N]``; ``T``, ``P``, ``A`` are the longest valid length among the
  exported clips (at least 1), not the store's capacity. Padded + lengths is what these readers
  take directly: one ``h5read`` / ``f["frames"][:]`` gives a numeric array (Keras: a masked or
  ragged batch from it), whereas ragged storage needs variable-length types (which MATLAB returns
  as cell arrays and Keras does not read) or offset tables every reader must slice itself.
- float32 features, the cache's float16 values exactly: not every HDF5 reader handles 16-bit floats
  (MATLAB's ``h5read``, HDF5 before 1.14.4), and shuffle + gzip compresses the zero low-order bytes.
- ``clip_id``, ``speaker`` (UTF-8 text), ``label`` ``int16 [N]`` (-1 none) indexing ``label_names``;
  ``targets`` / ``target_names`` and ``soft_label`` when the corpus has them.
- ``folds`` ``int8 [K, N]``: every fold's split code of each exported clip (0 train, 1 validation,
  2 test, -1 unused); with ``fold``, ``split`` ``int8 [N]`` is that fold's row.

Every dataset carries ``long_name``, ``units`` (where it has them) and ``dimensions`` (in C order:
MATLAB shows the axes reversed); code tables carry ``flag_values`` / ``flag_meanings``; the root
carries the provenance (dataset, config hash, models, aver version, source store). Arrays are
chunked along the clips (~1 MiB chunks) and compressed with gzip + shuffle, which every HDF5
reader has. The clips are read and written in batches of bounded size, verified against their
digests as they are read (``FeatureCache.read_features``), and the file is written beside ``out``
and renamed into place, so an interrupted export leaves no partial file under that name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aver import layout as L
from aver.errors import CacheError, MissingExtraError, UserError

MODALITIES = tuple(L.FEATURES)  # frames, flow, audio
SPLIT_ALIASES = {"val": "validation"}
BATCH_BYTES = 1 << 27  # what one batch may hold in memory (read + padded copy), ~128 MiB
CHUNK_BYTES = 1 << 20  # target size of one HDF5 chunk of a feature array


def _names(value: str | list[str] | None) -> list[str]:
    """A comma-separated flag value (or a list of names) as names."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [x.strip() for x in items if x.strip()]


def parse_modalities(value: str | list[str] | None) -> list[str]:
    """``frames,flow,audio`` (any subset, in any order; ``None``: all three) in the layout's order."""
    names = _names(value) or list(MODALITIES)
    unknown = [m for m in names if m not in MODALITIES]
    if unknown:
        raise UserError(f"--modality {','.join(unknown)}: unknown; choose from {','.join(MODALITIES)}")
    return [m for m in MODALITIES if m in names]


def parse_splits(value: str | list[str] | None, fold: int | None) -> list[str]:
    """``train,val,test`` (``val`` or ``validation``; ``None``: all three) of ``fold``."""
    if value is not None and fold is None:
        shown = value if isinstance(value, str) else ",".join(value)
        raise UserError(f"--split {shown}: a split belongs to a fold; give --fold K too")
    names = [SPLIT_ALIASES.get(x, x) for x in _names(value)]
    unknown = [s for s in names if s not in L.SPLITS]
    if unknown:
        raise UserError(f"--split {','.join(unknown)}: unknown; choose from train, val, test")
    return [s for s in L.SPLITS if s in (names or L.SPLITS)]


def check_out(out: str, force: bool) -> Path:
    """Refuse, before any work, an ``out`` that is a URL, lies in a folder that does not exist, is a
    folder, or exists (without ``force``)."""
    if "://" in out:
        raise UserError(f"{out}: export writes a local file; give a path (copy the file to share it)")
    path = Path(out).expanduser()
    if not path.parent.is_dir():
        raise UserError(f"{out}: folder {path.parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise UserError(f"{out} is a folder; give a file path such as {path / 'export.h5'}")
    if path.exists() and not force:
        raise UserError(f"{out} exists: pass --force to replace it, or choose another path")
    return path


def _h5py():
    try:
        import h5py
    except ImportError:
        raise MissingExtraError(
            "aver cache export needs h5py (not installed): pip install h5py (the [extract] extra includes it)"
        ) from None
    return h5py


def select(cache, fold: int | None, splits: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """The committed clips to export (store order) and, of the clips asked for, how many are left
    out by status (``pending`` / ``failed``): every clip, or the chosen splits of ``fold``."""
    if fold is None:
        wanted = np.ones(len(cache.ids), bool)
    else:
        cache.check_fold(fold)
        wanted = np.isin(cache.stored_folds[fold - 1], [L.SPLITS[s] for s in splits])
    left = {
        name: int((wanted & (cache.status == code)).sum())
        for code, name in L.STATUS_NAMES.items()
        if code != L.DONE
    }
    return np.flatnonzero(wanted & (cache.status == L.DONE)), left


def export(
    store: str,
    out: str,
    *,
    fold: int | None = None,
    splits: str | list[str] | None = None,
    modalities: str | list[str] | None = None,
    force: bool = False,
    storage_options: dict | None = None,
    batch_bytes: int = BATCH_BYTES,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the HDF5 export of ``store`` at ``out`` (module docstring); ``splits`` (of ``fold``
    only) and ``modalities`` as ``parse_splits`` / ``parse_modalities`` take them. Returns a summary:
    ``clips`` written, ``left_out`` (``{"pending": n, "failed": n}`` of the clips asked for),
    ``fold``, ``splits``, ``modalities``, ``bytes`` of the file."""
    from aver.cache import FeatureCache
    from aver.utils import atomic_write

    h5py = _h5py()
    modalities, splits = parse_modalities(modalities), parse_splits(splits, fold)
    path = check_out(out, force)
    cache = FeatureCache(store, storage_options)
    idx, left = select(cache, fold, splits)
    if not len(idx):
        where = "the store" if fold is None else f"splits {','.join(splits)} of fold {fold}"
        raise CacheError(
            f"{store}: no committed clips to export in {where} ({left['pending']} pending, "
            f"{left['failed']} failed): finish `aver extract` first (aver info lists the failures)"
        )
    cache.require_intact(idx)
    selection = {"fold": fold, "splits": splits if fold is not None else [], "modalities": modalities}

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _root_attributes(f, cache, store, selection)
            _write_table(f, cache, idx, fold)
            _write_features(f, cache, idx, modalities, batch_bytes, progress)

    atomic_write(path, write)
    return {
        "clips": len(idx),
        "left_out": left,
        **selection,
        "bytes": path.stat().st_size,
    }


def _root_attributes(f, cache, store: str, selection: dict[str, Any]) -> None:
    """Provenance and the reading conventions, on the file's root."""
    import datetime as dt

    from aver import __version__

    meta = cache.meta
    window, stride = cache.flow_schedule
    attrs = {
        "title": f"aver feature export of {meta.get('dataset') or store}",
        "layout": "padded: frames[i, :n_frames[i]] (likewise flow / n_flow, audio / n_audio) are clip "
        "i's valid rows, zeros past them; axes in C order (h5py, numpy); MATLAB h5read reverses them",
        "source": str(store),
        "dataset": meta.get("dataset") or "",
        "preset": meta.get("preset") or "",
        "config_hash": meta.get("config_hash") or "",
        "aver_version": __version__,
        "cache_code_version": str(meta.get("code_version") or ""),
        "layout_version": int(meta["layout_version"]),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "models": json.dumps(meta.get("models") or {}, sort_keys=True),
        "config": json.dumps(meta.get("config") or {}, sort_keys=True, default=str),
        "label_source": cache.label_source,
        "folds_source": meta.get("folds_source") or "",
        "split_codes": json.dumps(L.SPLIT_CODES),
        "audio_rate_hz": float(meta["dims"]["audio_rate_hz"]),
        "flow_window": window,
        "flow_stride": stride,
        "tiny_random_models": bool(meta.get("tiny")),
        "splits": ",".join(selection["splits"]),
        "modalities": ",".join(selection["modalities"]),
    }
    if selection["fold"] is not None:
        attrs["fold"] = int(selection["fold"])
    f.attrs.update(attrs)


def _describe(long_name: str, units: str | None, dimensions: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"long_name": long_name, "dimensions": dimensions, **extra}
    if units:
        out["units"] = units
    return out


def _dataset(f, name: str, data: np.ndarray, attrs: dict[str, Any]) -> None:
    """A small dataset written whole: gzip + shuffle (an empty one contiguous: HDF5 cannot chunk it)."""
    h5py = _h5py()
    text = data.dtype.kind in "UOT"
    if text:
        data = np.asarray([str(x) for x in data.ravel()], dtype=object).reshape(data.shape)
    kw = {"compression": "gzip", "shuffle": True} if data.size else {}
    f.create_dataset(name, data=data, dtype=h5py.string_dtype() if text else data.dtype, **kw)
    f[name].attrs.update(attrs)


def _write_table(f, cache, idx: np.ndarray, fold: int | None) -> None:
    """Clip ids, speakers, labels and their names, targets, soft labels and the folds' split codes."""
    from aver.pack import DESCRIPTIONS

    classes = cache.classes
    _dataset(f, "clip_id", cache.ids[idx], _describe("clip id", None, "clip"))
    _dataset(f, "speaker", cache.speakers[idx], _describe("speaker id", None, "clip"))
    flags = {}
    if classes:
        flags = {
            "flag_values": np.arange(-1, len(classes), dtype=np.int16),
            "flag_meanings": " ".join(["none", *(c.replace(" ", "_") for c in classes)]),
        }
    label = _describe(DESCRIPTIONS[L.LABEL][0], "1", "clip", **flags)
    _dataset(f, "label", cache.labels[idx].astype(np.int16), label)
    _dataset(f, "label_names", np.asarray(classes, dtype=object), _describe("class names", None, "class"))
    if cache.target_names:
        _dataset(
            f,
            "targets",
            cache.targets[idx].astype(np.float32),
            _describe("continuous targets", "1", "clip target"),
        )
        _dataset(
            f,
            "target_names",
            np.asarray(cache.target_names, dtype=object),
            _describe("target names", None, "target"),
        )
    if cache.soft_labels is not None:
        soft = _describe(DESCRIPTIONS[L.SOFT_LABEL][0] + " (NaN: none)", "1", "clip class")
        _dataset(f, "soft_label", cache.soft_labels[idx].astype(np.float32), soft)
    codes = {
        "flag_values": np.asarray(list(L.SPLIT_CODES.values()), dtype=np.int8),
        "flag_meanings": " ".join(L.SPLIT_CODES),
    }
    if cache.n_folds:
        folds = np.ascontiguousarray(cache.stored_folds[:, idx], dtype=np.int8)
        numbers = np.arange(1, cache.n_folds + 1, dtype=np.int16)
        _dataset(
            f,
            "folds",
            folds,
            _describe("split of each clip in each fold", "1", "fold clip", fold_numbers=numbers, **codes),
        )
    if fold is not None:
        row = np.ascontiguousarray(cache.stored_folds[fold - 1, idx], dtype=np.int8)
        _dataset(
            f, "split", row, _describe(f"split of each clip in fold {fold}", "1", "clip", fold=fold, **codes)
        )


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """HDF5 chunks of about ``CHUNK_BYTES``: whole clips (several per chunk when they are small),
    else one clip cut along its time axis."""
    step = int(np.prod(shape[2:])) * itemsize  # one time step of one clip
    clip = step * shape[1]
    if clip <= CHUNK_BYTES:
        return (max(1, min(shape[0], CHUNK_BYTES // max(clip, 1))), *shape[1:])
    return (1, max(1, min(shape[1], CHUNK_BYTES // max(step, 1))), *shape[2:])


def _feature_attributes(cache, key: str) -> dict[str, Any]:
    from aver.pack import DESCRIPTIONS

    name = L.FEATURES[key]
    long_name, units = DESCRIPTIONS[name]
    time = {"frames": "frame", "flow": "flow_frame", "audio": "audio_frame"}[key]
    dims = f"clip {time} layer feature" if key == "audio" else f"clip {time} feature"
    extra: dict[str, Any] = {"lengths": L.LENGTHS[key].split("/")[1], "padding": 0.0}
    if key == "flow":
        window, stride = cache.flow_schedule
        extra["alignment"] = f"flow map p lies between frames p*{stride} and p*{stride}+{window}"
    if key == "audio":
        layers = ((cache.meta.get("config") or {}).get("audio") or {}).get("layers")
        n_layers = int(cache.meta["dims"]["audio_layers"])
        ok = isinstance(layers, list) and len(layers) == n_layers
        extra["layers"] = np.asarray(layers if ok else range(n_layers), dtype=np.int16)
        extra["rate_hz"] = float(cache.meta["dims"]["audio_rate_hz"])
    return _describe(long_name, units, dims, **extra)


def _write_features(
    f, cache, idx: np.ndarray, modalities: list[str], batch_bytes: int, progress: bool
) -> None:
    """The padded feature arrays and their lengths, filled batch by batch: at most ``batch_bytes``
    of features in memory (what ``read_features`` reads at capacity plus the padded float32 copy)."""
    from tqdm import tqdm

    n = len(idx)
    shapes, read_bytes = {}, 0
    for key in MODALITIES:
        stored = cache.group[L.FEATURES[key]].shape[1:]  # capacity and feature axes
        read_bytes += int(np.prod(stored)) * 2  # float16, whole rows (verified reads)
        if key in modalities:
            lengths = cache.lengths[key][idx].astype(np.int32)
            shapes[key] = (n, max(int(lengths.max()), 1), *stored[1:])
            _dataset(f, L.LENGTHS[key].split("/")[1], lengths, _describe(f"valid rows of {key}", "1", "clip"))
            f.create_dataset(
                key,
                shape=shapes[key],
                dtype=np.float32,
                chunks=_chunks(shapes[key], 4),
                compression="gzip",
                shuffle=True,
                fillvalue=0.0,
            )
            f[key].attrs.update(_feature_attributes(cache, key))
    per_clip = read_bytes + sum(int(np.prod(s[1:])) * 4 for s in shapes.values())
    batch = max(1, batch_bytes // max(per_clip, 1))
    bar = tqdm(total=n, desc="export", unit="clip", disable=not progress, leave=False)
    for start in range(0, n, batch):
        feats = cache.read_features(idx[start : start + batch])  # verified against the digests
        for key, shape in shapes.items():
            rows = feats[key]
            block = np.zeros((len(rows), *shape[1:]), np.float32)
            for k, x in enumerate(rows):
                block[k, : len(x)] = x
            f[key][start : start + len(rows)] = block
        bar.update(len(feats["frames"]))
    bar.close()
