"""The one cache writer: creates a store laid out as ``aver.layout`` says, and commits clips.

Protocol (after xarray-beam): ``create_or_open`` writes a metadata-only template (every array,
the clip table, the folds, the provenance) before any clip is processed. Each clip then owns
exactly one chunk of every per-clip array, so writers on many processes or machines never touch
the same object. A clip is committed by writing its data chunks first and its ``clips/status``
chunk last: a run killed at any moment leaves the clip ``pending`` and a rerun rewrites it.
Every write is idempotent (same inputs, same bytes), so resuming yields the arrays of an
uninterrupted run.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aver import layout as L
from aver.errors import CacheError, CacheMismatchError
from aver.integrity import TABLE_DIGEST

log = logging.getLogger(__name__)


@dataclass
class Capacity:
    """Padded lengths of the per-clip time axes (frames at native rate; audio at ``audio_rate_hz``)."""

    frames: int
    audio: int


@dataclass
class ClipTable:
    """The columns known before extraction, in the store's clip order.

    ``labels`` index ``classes`` (-1 = none); ``targets`` is ``float32 [N, K_t]`` named by
    ``target_names``; ``folds`` is ``int8 [K, N]`` of split codes (``aver.layout.SPLIT_CODES``).
    ``soft_labels`` (``float32 [N, C]``, NaN rows for clips without one) holds consensus label
    distributions when ``label_source`` says the labels come from them.
    """

    ids: list[str]
    speakers: list[str]
    videos: list[str]
    labels: np.ndarray
    targets: np.ndarray
    folds: np.ndarray
    classes: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)
    folds_source: str = ""
    soft_labels: np.ndarray | None = None
    label_source: str = "file name"

    def columns(self) -> dict[str, np.ndarray | None]:
        """The clip-table arrays by store name; ``None`` for one the corpus does not have."""
        n = len(self.ids)
        return {
            L.CLIP_ID: np.array(self.ids, dtype=str),
            L.SPEAKER: np.array(self.speakers, dtype=str),
            L.VIDEO: np.array(self.videos, dtype=str),
            L.LABEL: np.asarray(self.labels, dtype=np.int16),
            L.TARGETS: np.asarray(self.targets, dtype=np.float32).reshape(n, -1)
            if self.target_names
            else None,
            L.SOFT_LABEL: None if self.soft_labels is None else np.asarray(self.soft_labels, np.float32),
            L.FOLD_SPLIT: np.asarray(self.folds, dtype=np.int8) if self.folds.size else None,
        }


@dataclass
class ClipResult:
    """Everything one finished clip writes. T = frames, P = flow maps, A = audio frames, L = layers."""

    frame_features: np.ndarray  # float16 [T, D_img]
    flow_features: np.ndarray  # float16 [P, D_img]
    audio_features: np.ndarray  # float16 [A, L, D_audio]
    timestamps: np.ndarray  # float32 [T] seconds
    face_box: np.ndarray  # float32 [T, 4] x1, y1, x2, y2 in source pixels (smoothed crop box)
    face_prob: np.ndarray  # float32 [T]
    face_mask: np.ndarray  # bool [T] True where MTCNN detected the face (else filled)
    fps: float
    note: str = ""  # what was cut or kept and why (e.g. "cut at 300 of >= 750 frames: ..."), else ""
    inputs: ClipInputs | None = None  # end-to-end inputs, for a store that holds them


@dataclass
class ClipInputs:
    """A clip's end-to-end inputs (``inputs/*``); ``None`` for one the store does not hold."""

    crops: np.ndarray | None  # uint8 [K, S, S, 3]
    crop_index: np.ndarray | None  # int [K] frame of each crop
    wave: np.ndarray | None  # int16 [W] 16 kHz PCM


def _compressors(dtype: str):
    from zarr.codecs import BloscCodec

    if dtype == "uint8":  # face crops: zstd 9 without shuffle packs camera images 1.5x (level 3: 1.3x)
        return BloscCodec(cname="zstd", clevel=9, shuffle="noshuffle")
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle" if dtype == "float16" else "shuffle")


def create_array(g, spec: L.ArraySpec, shape: tuple[int, ...], chunks: tuple[int, ...], **kwargs: Any):
    """Array ``spec`` in group ``g`` with the layout's dtype, fill value, dimension names and
    compression; ``kwargs`` go to zarr (``shards``, ``attributes``). Every store is made here."""
    if spec.dtype != "str":
        kwargs["compressors"] = _compressors(spec.dtype)
    return g.create_array(
        spec.name,
        shape=shape,
        dtype=str if spec.dtype == "str" else spec.dtype,
        chunks=chunks,
        fill_value=spec.fill,
        dimension_names=spec.dims,
        **kwargs,
    )


def _create(
    g, spec: L.ArraySpec, sizes: dict[str, int], meta: dict[str, Any], data: np.ndarray | None = None
) -> None:
    """A working-store array: one chunk per clip for per-clip arrays, else one chunk. It carries the
    CF-style attributes a packed copy has (``long_name``, ``units``, ``flag_values`` /
    ``flag_meanings`` of the status, label and split codes: ``aver.pack``), which xarray shows
    and CF tools read; ``meta`` gives the class and target names."""
    from aver.pack import _attributes

    shape = spec.shape(sizes)
    chunks = (1, *(max(s, 1) for s in shape[1:])) if spec.per_clip else tuple(max(s, 1) for s in shape)
    arr = create_array(g, spec, shape, chunks, attributes=_attributes(spec.name, meta))
    if data is not None:
        arr[:] = data


def _write_template(
    g, table: ClipTable, cap: Capacity, dims: dict[str, Any], layers: list[int] | None = None
) -> None:
    n = len(table.ids)
    sizes = {
        "N": n,
        "T": cap.frames,
        "A": cap.audio,
        "L": dims["audio_layers"],
        "D_image": dims["image"],
        "D_audio": dims["audio"],
        "K": int(table.folds.shape[0]) if table.folds.size else 0,
        "K_t": len(table.target_names),
        "C": len(table.classes),
    }
    columns = table.columns()
    names = {"classes": list(table.classes), "targets": list(table.target_names)}
    for name, spec in L.ARRAYS.items():
        if name in columns and columns[name] is None:  # targets / folds / soft labels the corpus lacks
            continue
        if name in L.INPUT_ARRAYS:  # added by ``add_inputs`` when a run asks for them
            continue
        _create(g, spec, sizes, names, columns.get(name))
    write_coordinates(g, table.ids, sizes["K"], layers or list(range(int(dims["audio_layers"]))))


def _table_digests(g) -> dict[str, str]:
    """``attrs.aver.table_digest`` of a freshly written template: the clip table and coordinates as
    stored (``aver.integrity.table_digests``)."""
    from aver.integrity import COORDINATES, TABLE_ARRAYS, table_digests

    names = [n for n in (*TABLE_ARRAYS, *COORDINATES) if L.has_array(g, n)]
    return table_digests({n: g[n][:] for n in names})


def write_coordinates(g, ids: list[str], n_folds: int, layers: list[int]) -> None:
    """Root coordinates ``clip`` (ids), ``fold`` (1..K) and ``layer`` (stored hidden-state indices),
    which every group inherits in ``xarray.open_datatree``; readers of the layout ignore them."""
    ids_arr = np.array([str(i) for i in ids], dtype=str)
    g.create_array("clip", shape=ids_arr.shape, dtype=str, dimension_names=("clip",), overwrite=True)
    g["clip"][:] = ids_arr
    g["clip"].attrs.update(long_name="clip id")
    folds = np.arange(1, n_folds + 1, dtype=np.int16)
    g.create_array("fold", data=folds, dimension_names=("fold",), overwrite=True)
    g["fold"].attrs.update(long_name="fold number (from 1)")
    g.create_array(
        "layer", data=np.asarray(layers, dtype=np.int16), dimension_names=("layer",), overwrite=True
    )
    g["layer"].attrs.update(
        long_name="wav2vec2 hidden-state index (0: CNN projection; negative: from the last)"
    )


def _digests(g, i: int, data: dict, t: int, p: int, a: int, r: ClipResult, notes: bool) -> str:
    """``clips/digest`` of clip ``i`` about to be committed (``aver.integrity``): its arrays and its
    row of the clip table as stored."""
    from aver.integrity import TABLE_ARRAYS, TIME_ARRAYS, clip_digests, row_digests

    lengths = {L.N_FRAMES: t, L.N_FLOW: p, L.N_AUDIO: a}
    rows: dict[str, Any] = {name: data[name][0][: lengths[n]] for name, n in TIME_ARRAYS.items()}
    rows.update({L.N_FRAMES: t, L.N_FLOW: p, L.N_AUDIO: a, L.FPS: r.fps})
    table = {}
    for name in TABLE_ARRAYS:
        if L.has_array(g, name):  # the row only, not the whole array (folds: the clip's column)
            table[name] = g[name][:, i : i + 1] if name == L.FOLD_SPLIT else g[name][i : i + 1]
    return clip_digests(rows, r.note if notes else None, row_digests(table, 0))


def _column_change(g, name: str, want: np.ndarray | None) -> str:
    """How the stored clip-table array ``name`` differs from ``want`` ("" when it does not)."""
    have = g[name][:] if L.has_array(g, name) else None
    if have is None or want is None:
        return "" if have is None and want is None else ("added" if have is None else "removed")
    if have.shape != want.shape:
        return f"shape {have.shape} -> {want.shape}"
    same = (have == want) | (np.isnan(have) & np.isnan(want)) if have.dtype.kind == "f" else have == want
    n = int((~same).sum())
    return f"{n} values differ" if n else ""


class CacheWriter:
    """Creates, validates and fills one dataset store. Safe to use from many processes at once,
    provided each clip index is written by one of them."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.storage_options = storage_options or {}
        self._g = None
        self._present: dict[str, bool] = {}

    @property
    def group(self):
        if self._g is None:
            self._g = L.open_root(self.url, "r+", self.storage_options)
        return self._g

    @classmethod
    def create_or_open(
        cls,
        url: str,
        table: ClipTable,
        attrs: dict[str, Any],
        cap: Capacity,
        dims: dict[str, Any],
        overwrite: bool = False,
        storage_options: dict | None = None,
    ) -> CacheWriter:
        """Write the template, or check that an existing store was made with the same config.

        Idempotent: opening an existing matching store changes nothing but the run log.
        Raises ``CacheMismatchError`` when the store exists with another config hash or clip list.
        """
        writer = cls(url, storage_options)
        if not overwrite and not cls.needs_template(url, storage_options):
            writer._validate(table, attrs)
            return writer
        g = L.open_root(url, "w", storage_options)
        # Marked incomplete first: a run killed while the template is written leaves a store that
        # the next run recognises and writes again (``needs_template``), never a half template.
        g.attrs[L.ATTRS_KEY] = {L.TEMPLATE_KEY: "incomplete", "layout_version": L.LAYOUT_VERSION}
        layers = ((attrs.get("config") or {}).get("audio") or {}).get("layers")
        ok = isinstance(layers, list | tuple) and len(layers) == int(dims.get("audio_layers", -1))
        _write_template(g, table, cap, dims, list(layers) if ok else None)
        meta = dict(attrs)
        meta.update(
            layout_version=L.LAYOUT_VERSION,
            n_clips=len(table.ids),
            classes=list(table.classes),
            targets=list(table.target_names),
            folds_source=table.folds_source,
            label_source=table.label_source,
            split_codes=dict(L.SPLIT_CODES),
            dims=dict(dims),
            capacity={"frames": cap.frames, "audio": cap.audio},
            created=_now(),
            runs=[],
        )
        meta[TABLE_DIGEST] = _table_digests(g)
        g.attrs[L.ATTRS_KEY] = meta
        writer._g = g
        return writer

    @staticmethod
    def needs_template(url: str, storage_options: dict | None = None) -> bool:
        """True when there is no store at ``url`` yet, or only what an interrupted template left:
        an empty group without attributes, or a template marked incomplete."""
        if not L.store_exists(url, storage_options):
            return True
        g = L.open_root(url, "r", storage_options)
        meta = g.attrs.get(L.ATTRS_KEY)
        if meta is None:
            return not any(True for _ in g.members())
        return isinstance(meta, dict) and meta.get(L.TEMPLATE_KEY) == "incomplete"

    def _validate(self, table: ClipTable, attrs: dict[str, Any]) -> None:
        g = self.group
        meta = g.attrs.get(L.ATTRS_KEY)
        if not meta:
            raise CacheError(
                f"{self.url} exists but is not an aver cache (no 'aver' attributes); "
                "choose another --cache or pass --overwrite"
            )
        if meta.get("packed"):
            raise CacheError(
                f"{self.url} is a packed copy for sharing (aver cache pack), read-only: extract into the "
                "working store it was packed from, then pack again"
            )
        if meta.get("config_hash") != attrs["config_hash"]:
            raise CacheMismatchError(
                f"{self.url} was made with config {meta.get('config_hash')} (preset {meta.get('preset')!r}); this run "
                f"has config {attrs['config_hash']} (preset {attrs.get('preset')!r}). Differences: "
                f"{diff_dicts(meta.get('config', {}), attrs['config'])}. Refusing to mix results: pass --overwrite "
                "to start over, or write to another --cache."
            )
        ids = list(g[L.CLIP_ID][:])
        if ids != list(table.ids):
            raise CacheMismatchError(
                f"{self.url} holds {len(ids)} clips but the dataset now lists {len(table.ids)} (or another "
                "order); the clip table would not match. Pass --overwrite to start over."
            )
        self._validate_table(table, meta)

    def _validate_table(self, table: ClipTable, meta: dict[str, Any]) -> None:
        """Labels, soft labels, targets and folds of a reopened store are the ones this run would
        write: a changed label source or fold file is refused, never silently ignored."""
        want_meta = {
            "classes": list(table.classes),
            "targets": list(table.target_names),
            "folds_source": table.folds_source,
            "label_source": table.label_source,
        }
        diffs = [
            f"{key}: {meta.get(key)!r} -> {want!r}"
            for key, want in want_meta.items()
            if key in meta and meta[key] != want  # label_source: absent in stores before aver 0.2
        ]
        for name, want in table.columns().items():
            if name not in (L.CLIP_ID, L.SPEAKER, L.VIDEO):
                changed = _column_change(self.group, name, want)
                if changed:
                    diffs.append(f"{name}: {changed}")
        if diffs:
            raise CacheMismatchError(
                f"{self.url} was made with other labels or folds ({'; '.join(diffs)}). Its features "
                "are fine, but its clip table would not match this run: pass --overwrite to start "
                "over, or write to another --cache."
            )

    # -- run bookkeeping (driver only) -------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return dict(self.group.attrs[L.ATTRS_KEY])

    def capacity(self) -> Capacity:
        c = self.meta()["capacity"]
        return Capacity(int(c["frames"]), int(c["audio"]))

    def log_run(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` to the store's run log (``attrs.aver.runs``)."""
        meta = self.meta()
        meta["runs"] = [*meta.get("runs", []), {"time": _now(), **entry}]
        self.group.attrs[L.ATTRS_KEY] = meta

    def status(self) -> np.ndarray:
        """``int8 [N]`` commit status of every clip (``aver.layout`` status codes)."""
        return self.group[L.STATUS][:]

    # -- per-clip writes (any process) -------------------------------------------------------
    def write_clip(self, i: int, r: ClipResult) -> None:
        """Commit clip ``i``: data chunks first, the status chunk last. Idempotent."""
        g = self.group
        cap_t, cap_a = g[L.FRAME_FEATURES].shape[1], g[L.AUDIO_FEATURES].shape[1]
        t, p, a = len(r.frame_features), len(r.flow_features), len(r.audio_features)
        if t > cap_t or p > cap_t or a > cap_a:
            raise ValueError(
                f"clip {i}: {t} frames / {a} audio frames exceed the store capacity {cap_t}/{cap_a}"
            )
        data = {
            L.FRAME_FEATURES: (r.frame_features, cap_t),
            L.FLOW_FEATURES: (r.flow_features, cap_t),
            L.AUDIO_FEATURES: (r.audio_features, cap_a),
            L.TIMESTAMP: (r.timestamps, cap_t),
            L.FACE_BOX: (r.face_box, cap_t),
            L.FACE_PROB: (r.face_prob, cap_t),
            L.FACE_MASK: (r.face_mask, cap_t),
        }
        for name, (x, _) in data.items():
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                raise ValueError(f"{self.url}: clip {i}: {name} has non-finite values (NaN/inf); not written")
        for name, (x, length) in data.items():
            g[name][i] = _pad(x, length)
        for name, value in ((L.N_FRAMES, t), (L.N_FLOW, p), (L.N_AUDIO, a), (L.FPS, r.fps)):
            g[name][i] = value
        g[L.ERROR][i] = ""
        if self._has(L.NOTE):
            g[L.NOTE][i] = r.note
        if self._has(L.DIGEST):  # before the status: a committed clip always has its digests
            g[L.DIGEST][i] = _digests(g, i, data, t, p, a, r, self._has(L.NOTE))
        if r.inputs is not None and self._has(L.INPUT_STATUS):
            self.write_inputs(i, r.inputs)
        g[L.STATUS][i] = L.DONE

    # -- end-to-end inputs (layout 2) ---------------------------------------------------------
    def add_inputs(self, inputs_meta: dict[str, Any]) -> None:
        """Create the ``inputs/*`` arrays (every clip pending) and record ``attrs.aver.inputs``."""
        meta = self.meta()
        meta["inputs"] = dict(inputs_meta)
        sizes = L.sizes_from_meta(meta, int(self.group[L.CLIP_ID].shape[0]))
        for name in L.INPUT_ARRAYS:
            _create(self.group, L.ARRAYS[name], sizes, meta)
        meta["layout_version"] = L.LAYOUT_VERSION
        self.group.attrs[L.ATTRS_KEY] = meta
        self._present.clear()

    def write_inputs(self, i: int, x: ClipInputs) -> None:
        """Commit clip ``i``'s inputs: data, digest, then ``inputs/status`` last. Idempotent."""
        from aver.integrity import input_digests

        g = self.group
        k_cap, w_cap = g[L.CROPS].shape[1], g[L.WAVE].shape[1]
        crops = x.crops if x.crops is not None else np.zeros((0, *g[L.CROPS].shape[2:]), np.uint8)
        index = np.asarray(x.crop_index if x.crop_index is not None else [], np.int32)
        wave = x.wave if x.wave is not None else np.zeros(0, np.int16)
        if len(crops) > k_cap or len(wave) > w_cap:
            raise ValueError(f"clip {i}: {len(crops)} crops / {len(wave)} samples exceed {k_cap}/{w_cap}")
        if k_cap:
            g[L.CROPS][i] = _pad(crops, k_cap)
            g[L.CROP_INDEX][i] = np.concatenate([index, np.full(k_cap - len(index), -1, np.int32)])
        if w_cap:
            g[L.WAVE][i] = _pad(wave, w_cap)
        g[L.N_CROPS][i], g[L.N_WAVE][i] = len(crops), len(wave)
        g[L.INPUT_DIGEST][i] = input_digests(crops, index, wave)
        g[L.INPUT_STATUS][i] = L.DONE

    def write_inputs_failure(self, i: int) -> None:
        """Clip ``i``'s inputs reset and marked failed (its features are untouched)."""
        g = self.group
        for name in L.INPUT_DATA:
            g[name][i] = np.full(g[name].shape[1:], L.ARRAYS[name].fill, dtype=g[name].dtype)
        g[L.N_CROPS][i], g[L.N_WAVE][i], g[L.INPUT_DIGEST][i] = 0, 0, ""
        g[L.INPUT_STATUS][i] = L.FAILED

    def input_status(self) -> np.ndarray | None:
        """``int8 [N]`` commit status of every clip's inputs; ``None`` in a store without inputs."""
        return self.group[L.INPUT_STATUS][:] if self._has(L.INPUT_STATUS) else None

    def write_failure(self, i: int, cause: str) -> None:
        """Record clip ``i`` as failed with ``cause``; its data chunks are reset to the fill value
        (zarr drops all-fill chunks), so a failed clip looks the same whatever was half-written."""
        g = self.group
        for name in L.CLIP_DATA:
            arr = g[name]
            arr[i] = np.zeros(arr.shape[1:], dtype=arr.dtype)
        for name in L.CLIP_SCALARS:
            g[name][i] = 0
        g[L.ERROR][i] = cause
        if self._has(L.NOTE):
            g[L.NOTE][i] = ""
        if self._has(L.DIGEST):  # a failed clip's record holds its error text (aver.integrity)
            from aver.integrity import failure_digests

            g[L.DIGEST][i] = failure_digests(cause)
        if self._has(L.INPUT_STATUS):
            self.write_inputs_failure(i)
        g[L.STATUS][i] = L.FAILED

    def _has(self, name: str) -> bool:
        """Whether array ``name`` exists: arrays added to the layout later (``clips/note`` in aver
        0.2, ``clips/digest`` in 0.3) are absent from older stores, which stay writable as they are."""
        if name not in self._present:
            self._present[name] = L.has_array(self.group, name)
        return self._present[name]


def _pad(x: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((length, *x.shape[1:]), dtype=x.dtype)
    out[: len(x)] = x
    return out


def diff_dicts(old: dict, new: dict, prefix: str = "") -> str:
    """``a.b: 1 -> 2; c: 'x' -> 'y'`` for every leaf that differs (lists and tuples compare equal)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = diff_dicts(a, b, f"{prefix}{key}.")
            if sub != "none":
                changes.append(sub)
        elif a != b and not (
            isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b)
        ):
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(changes) if changes else "none"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
