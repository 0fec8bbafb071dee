"""The one cache reader: everything stage two and ``aver info`` read goes through ``FeatureCache``.

Opening a cache reads arrays and JSON only; nothing in it can execute code. Every array's shape
and dtype is checked against ``aver.layout`` and the store's own attributes before anything is
read, so an edited or damaged store is refused with the array named instead of being trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from aver import layout as L
from aver.errors import CacheError

log = logging.getLogger(__name__)


@dataclass
class ClipFeatures:
    """One clip's valid rows. T frames, P flow maps, A audio frames, L layers."""

    clip_id: str
    frames: np.ndarray  # float16 [T, D_img]
    flow: np.ndarray  # float16 [P, D_img]
    audio: np.ndarray  # float16 [A, L, D_audio]
    label: int  # -1 when the corpus has no classes
    targets: np.ndarray  # float32 [K] (empty when the corpus has no targets)


class FeatureCache:
    """A cache opened for reading: the clip table and folds in memory, features read on demand."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        import zarr

        try:
            self.group = L.open_root(url, "r", storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise CacheError(f"no cache at {url}: run `aver extract` first, or check the path/URL") from None
        meta = self.group.attrs.get(L.ATTRS_KEY)
        if not isinstance(meta, dict):
            raise CacheError(f"{url} is a Zarr store but not an aver cache (no 'aver' attributes)")
        if meta.get(L.TEMPLATE_KEY) == "incomplete":
            remedy = meta.get("remedy") or (
                "an extraction was interrupted while creating it; rerun the same `aver extract` command "
                "to finish it"
            )
            raise CacheError(f"{url} is incomplete: {remedy}")
        version = meta.get("layout_version")
        if type(version) is not int or version not in L.READABLE_VERSIONS:
            raise CacheError(
                f"{url} has cache layout {version!r}; this aver reads layouts {list(L.READABLE_VERSIONS)}: "
                "re-extract it with this aver (or read it with the aver that wrote it)"
            )
        self.url = url
        self.storage_options = storage_options  # to reopen the store in another process (aver.dataset)
        self.meta: dict[str, Any] = meta
        self.damage: list = []  # aver.integrity.Problem: what is wrong, by clip and array
        self._check_meta()
        self._check_arrays()
        self.ids = np.asarray(self._load(L.CLIP_ID))
        self.speakers = np.asarray(self._load(L.SPEAKER))
        self.labels = self._load(L.LABEL).astype(np.int64)
        n = len(self.ids)
        self.targets = self._load(L.TARGETS) if self._has(L.TARGETS) else np.zeros((n, 0), np.float32)
        self.soft_labels = self._load(L.SOFT_LABEL) if self._has(L.SOFT_LABEL) else None
        self.status = self._load(L.STATUS)
        self.lengths = {k: self._load(name).astype(np.int64) for k, name in L.LENGTHS.items()}
        self.folds = self._load(L.FOLD_SPLIT) if self._has(L.FOLD_SPLIT) else np.zeros((0, n), np.int8)
        self.stored_folds = self.folds  # ``folds`` may be replaced by a protocol's (aver.train.protocols)
        self._check_table()
        self.damage.extend(self._integrity_damage())

    def _load(self, name: str) -> np.ndarray:
        """A whole array. A per-clip array (status, lengths, digests) whose chunk cannot be decoded
        reads as its fill value there and the clip is recorded in ``damage``, so ``verify`` can name
        it; a clip-table array that cannot be decoded is a ``CacheError`` naming it."""
        arr = self.group[name]
        try:
            return arr[:]
        except Exception as e:  # noqa: BLE001 - decoder and metadata errors of any kind
            if not L.ARRAYS[name].per_clip:
                raise CacheError(
                    f"{self.url}: damaged cache: {name} cannot be read ({type(e).__name__}: {e})"
                ) from None
        return self._load_rows(name, arr)

    def _load_rows(self, name: str, arr) -> np.ndarray:
        """``name`` read chunk by chunk along the clips; undecodable chunks hold the fill value."""
        from aver.integrity import Problem

        spec, step = L.ARRAYS[name], max(int(arr.chunks[0]), 1)
        out = np.full(arr.shape, spec.fill, dtype=object if spec.dtype == "str" else spec.dtype)
        for start in range(0, arr.shape[0], step):
            try:
                out[start : start + step] = arr[start : start + step]
            except Exception as e:  # noqa: BLE001
                for i in range(start, min(start + step, arr.shape[0])):
                    clip = str(self.ids[i]) if hasattr(self, "ids") else f"row {i}"
                    self.damage.append(Problem(clip, name, f"chunk cannot be decoded ({type(e).__name__})"))
        return out

    def _integrity_damage(self) -> list:
        """The clip table against ``attrs.aver.table_digest`` (by clip where the clips' records
        say which rows), and each clip's status against its digest record (``aver.integrity``)."""
        from aver.integrity import TABLE_DIGEST, Problem, commit_problems, parse, table_digests

        out = []
        recorded = self.meta.get(TABLE_DIGEST)
        if isinstance(recorded, dict):
            now = table_digests({name: self._table_column(name) for name in recorded})
            for name, want in recorded.items():
                if now.get(name) != want:
                    out.append(
                        Problem("(clip table)", name, "differs from its digest: the table was changed")
                    )
        elif recorded is not None:
            out.append(Problem("(clip table)", "attrs.aver.table_digest", "damaged"))
        digests = self.digests()
        if digests is not None:
            out += commit_problems(self.ids, self.status, [parse(d) for d in digests], L.STATUS, L.DIGEST)
        if self.inputs:
            records = [parse(d) for d in self._load(L.INPUT_DIGEST)]
            out += commit_problems(self.ids, self.input_status(), records, L.INPUT_STATUS, L.INPUT_DIGEST)
        return out

    def _table_column(self, name: str) -> np.ndarray | None:
        """A clip-table array or coordinate as stored (``None`` when the store lacks it)."""
        loaded = {L.CLIP_ID: self.ids, L.SPEAKER: self.speakers, L.FOLD_SPLIT: self.stored_folds}
        if name in loaded and (name != L.FOLD_SPLIT or self._has(name)):
            return loaded[name]
        try:
            return self.group[name][:] if self._has(name) else None
        except Exception:  # noqa: BLE001 - undecodable: it then differs from its digest
            return None

    def require_intact(self, indices: np.ndarray | None = None, full: bool = False) -> None:
        """Refuse a store whose clip table is damaged, or whose clips ``indices`` (default: all) are
        (``full``: every array of those clips is verified against its digests, ``verify``): one
        ``CacheError`` naming the first problems; ``aver cache verify`` lists them all."""
        if full:  # the features are checked as they are loaded (``read_features``, padding included)
            found = self.verify(indices=indices, skip=frozenset(L.FEATURES.values()))[0]
        else:
            wanted = None if indices is None else {str(self.ids[i]) for i in indices}
            found = [p for p in self.damage if wanted is None or p.clip in wanted or p.clip.startswith("(")]
        if found:
            shown = "; ".join(str(p) for p in found[:3]) + (
                f"; and {len(found) - 3} more" if len(found) > 3 else ""
            )
            raise CacheError(
                f"{self.url}: damaged cache: {shown}. `aver cache verify {self.url}` lists every damaged clip "
                "and array: copy the store again, or re-extract those clips"
            )

    # -- validation --------------------------------------------------------------------------
    def _has(self, name: str) -> bool:
        try:
            return L.has_array(self.group, name)
        except Exception:  # noqa: BLE001 - unreadable metadata: present, and opening it will say why
            return True

    def _check_meta(self) -> None:
        """The attributes readers rely on have the types the layout gives them."""
        m = self.meta
        expect = {
            "dims": lambda v: (
                isinstance(v, dict)
                and all(
                    isinstance(v.get(k), int | float)
                    for k in ("image", "audio", "audio_layers", "audio_rate_hz")
                )
            ),
            "capacity": lambda v: (
                isinstance(v, dict) and all(type(v.get(k)) is int for k in ("frames", "audio"))
            ),
            "classes": lambda v: v is None or isinstance(v, list) and all(isinstance(c, str) for c in v),
            "targets": lambda v: v is None or isinstance(v, list) and all(isinstance(c, str) for c in v),
            "models": lambda v: v is None or isinstance(v, dict),
            "dataset": lambda v: v is None or isinstance(v, str),
            "folds_source": lambda v: v is None or isinstance(v, str),
            "label_source": lambda v: v is None or isinstance(v, str),
        }
        for key, ok in expect.items():
            if not ok(m.get(key)):
                raise CacheError(
                    f"{self.url}: damaged cache: attrs.aver.{key} = {m.get(key)!r:.80} is not what the layout says"
                )
        if len(m.get("classes") or []) > 100_000 or len(m.get("targets") or []) > L.LIMITS["K_t"]:
            raise CacheError(f"{self.url}: damaged cache: too many classes or targets in attrs.aver")

    def _check_arrays(self) -> None:
        """Every array present with the dtype and shape the layout and the attributes imply."""
        try:
            n = int(self.group[L.CLIP_ID].shape[0])
            k = int(self.group[L.FOLD_SPLIT].shape[0]) if self._has(L.FOLD_SPLIT) else 0
            sizes = L.sizes_from_meta(self.meta, n, k)
        except Exception as e:  # noqa: BLE001 - missing keys, wrong types, invalid array metadata
            raise CacheError(
                f"{self.url}: damaged cache: clip table or attributes unreadable ({type(e).__name__}: {e})"
            ) from None
        for key, value in sizes.items():
            if not 0 <= value <= L.LIMITS[key]:
                raise CacheError(
                    f"{self.url}: damaged cache: size {key} = {value} is outside 0..{L.LIMITS[key]}"
                )
        for name, spec in L.ARRAYS.items():
            if not self._has(name):
                if name in L.OPTIONAL:
                    continue
                raise CacheError(f"{self.url}: damaged cache: array {name} is missing")
            try:
                arr = self.group[name]
            except Exception as e:  # noqa: BLE001 - unknown codec, bad metadata: name the array
                raise CacheError(
                    f"{self.url}: damaged cache: {name} cannot be opened ({type(e).__name__}: {e})"
                ) from None
            want = spec.shape(sizes)
            try:
                chunks = tuple(int(c) for c in arr.chunks)
            except Exception:  # noqa: BLE001 - an irregular or unknown chunk grid
                chunks = ()
            # a packed copy gathers the per-clip scalars into whole arrays (aver.pack)
            per_clip_ok = not spec.per_clip or chunks[:1] == (1,) or bool(self.meta.get("packed"))
            if (
                len(chunks) != len(want)
                or not per_clip_ok
                or any(not 1 <= c <= max(w, 1) for c, w in zip(chunks, want, strict=False))
            ):
                raise CacheError(
                    f"{self.url}: damaged cache: {name} has chunks {chunks or '?'} for shape {want}"
                )
            if tuple(arr.shape) != want:
                raise CacheError(
                    f"{self.url}: damaged cache: {name} has shape {tuple(arr.shape)}, expected {want} "
                    "from the clip table and attrs.aver (dims, capacity)"
                )
            if spec.dtype != "str" and np.dtype(arr.dtype) != np.dtype(spec.dtype):
                raise CacheError(f"{self.url}: damaged cache: {name} is {arr.dtype}, expected {spec.dtype}")
            if spec.dtype != "str" and np.prod(want[1:]) * np.dtype(spec.dtype).itemsize > L.MAX_CHUNK_BYTES:
                raise CacheError(
                    f"{self.url}: damaged cache: one clip of {name} {want} exceeds {L.MAX_CHUNK_BYTES} bytes"
                )
            if spec.dtype == "str" and arr.dtype.kind not in "UTO":
                raise CacheError(f"{self.url}: damaged cache: {name} is {arr.dtype}, expected text")

    def _check_table(self) -> None:
        """Codes and lengths within their ranges: statuses, labels, split codes, valid lengths."""
        checks = [
            (L.STATUS, self.status, np.isin(self.status, list(L.STATUS_NAMES))),
            (
                L.LABEL,
                self.labels,
                (self.labels >= -1) & (self.labels < max(len(self.classes), 0)) | (self.labels == -1),
            ),
            (L.FOLD_SPLIT, self.folds, np.isin(self.folds, list(L.SPLIT_CODES.values()))),
        ]
        for name, values, ok in checks:
            if not np.all(ok):
                bad = np.argwhere(~np.asarray(ok))[0]
                raise CacheError(
                    f"{self.url}: damaged cache: {name} holds {values[tuple(bad)]!r} at {tuple(bad)}"
                )
        self._check_soft_labels()
        self._check_lengths()

    def _check_soft_labels(self) -> None:
        """Each consensus row is a distribution (finite, >= 0, sums to 1) or all NaN (no consensus)."""
        if self.soft_labels is None:
            return
        s = self.soft_labels
        empty = np.isnan(s).all(1)
        rows = s[~empty]
        ok = np.isfinite(rows).all(1) & (rows >= 0).all(1) & (np.abs(rows.sum(1) - 1) < 1e-3)
        if not ok.all():
            i = int(np.flatnonzero(~empty)[np.flatnonzero(~ok)[0]])
            raise CacheError(
                f"{self.url}: damaged cache: {L.SOFT_LABEL} of clip {self.ids[i]} is not a distribution "
                f"({s[i].tolist()})"
            )

    def _check_lengths(self) -> None:
        cap = {"frames": self.meta["capacity"]["frames"], "flow": self.meta["capacity"]["frames"]}
        cap["audio"] = self.meta["capacity"]["audio"]
        for key, values in self.lengths.items():
            bad = np.flatnonzero((values < 0) | (values > cap[key]))
            if len(bad):
                i = int(bad[0])
                raise CacheError(
                    f"{self.url}: damaged cache: clip {self.ids[i]} has {L.LENGTHS[key]} = {values[i]}, "
                    f"outside 0..{cap[key]}"
                )

    # -- the clip table ----------------------------------------------------------------------
    @property
    def table(self) -> Any:
        """The clip table as a pandas ``DataFrame``: one row per clip, in store order (row ``i`` is
        the cache index ``i`` that ``split_indices``, ``read_features`` and ``clip`` take).

        Columns: ``id``, ``speaker``, ``video``; ``label`` (the class name, categorical in
        ``classes`` order; missing where ``clips/label`` is -1) and ``label_index`` (``clips/label``);
        one column per continuous target (named as in ``target_names``, ``target_<name>`` where
        that name is taken); ``status`` (``pending`` / ``done`` / ``failed``, ``clips/status``),
        ``error`` (why a failed clip failed), ``note`` (what extraction cut or kept), ``n_frames``,
        ``n_flow``, ``n_audio`` (valid lengths); ``inputs`` (the end-to-end inputs' status, only in
        a store that has them); and ``fold1`` .. ``foldK`` (``train`` / ``validation`` / ``test`` /
        ``unused``: the codes of ``folds/split``, ``aver.layout.SPLIT_CODES``; a fold protocol's
        folds when one was applied to this reader). Built anew on each access; needs pandas.
        """
        try:
            import pandas as pd
        except ImportError:
            from aver.errors import MissingExtraError

            raise MissingExtraError(
                "FeatureCache.table needs pandas (not installed): pip install pandas"
            ) from None
        columns: dict[str, Any] = {
            "id": _strings(self.ids),
            "speaker": _strings(self.speakers),
            "video": _strings(self._text(L.VIDEO)),
            "label": pd.Categorical.from_codes(self.labels, categories=self.classes),
            "label_index": self.labels,
        }
        for k, name in enumerate(self.target_names):
            columns[f"target_{name}" if name in columns else name] = self.targets[:, k]
        columns["status"] = _named(pd, self.status, L.STATUS_NAMES)
        columns["error"] = _strings(self._text(L.ERROR))
        columns["note"] = _strings(self._text(L.NOTE))
        columns.update({f"n_{key}": self.lengths[key] for key in L.LENGTHS})
        if self.inputs:
            columns["inputs"] = _named(pd, self.input_status(), L.STATUS_NAMES)
        split_names = {code: name for name, code in L.SPLIT_CODES.items()}
        for k in range(self.n_folds):
            columns[f"fold{k + 1}"] = _named(pd, self.folds[k], split_names)
        return pd.DataFrame(columns)

    def _text(self, name: str) -> np.ndarray:
        """A per-clip text array, read once (``""`` for every clip when the store lacks it)."""
        texts = self.__dict__.setdefault("_texts", {})
        if name not in texts:
            texts[name] = self._load(name) if self._has(name) else np.full(len(self.ids), "", dtype=object)
        return texts[name]

    def dataset(
        self,
        fold: int = 1,
        split: str = "train",
        modalities: tuple[str, ...] | str = ("frames", "flow", "audio"),
        verify: bool = True,
    ) -> Any:
        """A ``torch.utils.data.Dataset`` over the committed clips of ``split`` in ``fold``
        (``aver.dataset.CacheDataset``: one dict of tensors per clip, ``.collate`` pads batches)."""
        from aver.dataset import CacheDataset

        return CacheDataset(self, fold=fold, split=split, modalities=modalities, verify=verify)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    # attrs.aver keys that say how the features were made (the writer adds the rest)
    PROVENANCE = (
        "dataset",
        "preset",
        "tiny",
        "config",
        "config_hash",
        "models",
        "code_version",
        "libraries",
        "notes",
    )

    def template(self) -> dict[str, Any]:
        """What a store made from this one (merged, pulled) writes as its template: the arguments
        ``table``, ``attrs``, ``cap`` and ``dims`` of ``CacheWriter.create_or_open``."""
        from aver.store import Capacity, ClipTable

        table = ClipTable(
            ids=[str(i) for i in self.ids],
            speakers=[str(s) for s in self.speakers],
            videos=[str(v) for v in self.array(L.VIDEO)],
            labels=self.labels.astype(np.int16),
            targets=self.targets,
            folds=self.folds,
            classes=self.classes,
            target_names=self.target_names,
            folds_source=self.meta.get("folds_source") or "",
            soft_labels=self.soft_labels,
            label_source=self.meta.get("label_source", "file name"),
        )
        cap = Capacity(int(self.meta["capacity"]["frames"]), int(self.meta["capacity"]["audio"]))
        attrs = {k: self.meta[k] for k in self.PROVENANCE if k in self.meta}
        return {"table": table, "attrs": attrs, "cap": cap, "dims": dict(self.meta["dims"])}

    @property
    def label_source(self) -> str:
        """Where ``clips/label`` comes from (``file name``, ``clip table``, ``consensus argmax:<files>``)."""
        return str(self.meta.get("label_source") or "file name")

    @property
    def target_names(self) -> list[str]:
        return list(self.meta.get("targets") or [])

    @property
    def dims(self) -> dict[str, Any]:
        return dict(self.meta["dims"])

    def notes(self) -> np.ndarray:
        """``clips/note``: what extraction cut or kept per clip ("" when nothing; all "" for old stores)."""
        return self._load(L.NOTE) if self._has(L.NOTE) else np.full(len(self.ids), "", dtype=object)

    @property
    def flow_schedule(self) -> tuple[int, int]:
        """(window, stride) of the flow maps: map p lies between frames p*stride and p*stride+window."""
        flow = (self.meta.get("config") or {}).get("flow") or {}
        window, stride = flow.get("window", 1), flow.get("stride", 1)
        if type(window) is not int or type(stride) is not int or window < 1 or stride < 1:
            raise CacheError(f"{self.url}: damaged cache: flow window/stride {window!r}/{stride!r}")
        return window, stride

    @property
    def audio_fragments(self) -> tuple[float, float] | None:
        """(fragment, hop) in seconds when the audio was encoded fragment by fragment (one stored
        frame per fragment, DE-III's reading); None for wav2vec2's 50 Hz frames."""
        audio = (self.meta.get("config") or {}).get("audio") or {}
        size, hop = audio.get("fragment_s", 0.0), audio.get("fragment_hop_s", 0.0)
        if not isinstance(size, int | float) or not isinstance(hop, int | float) or size < 0 or hop < 0:
            raise CacheError(f"{self.url}: damaged cache: audio fragment_s/fragment_hop_s {size!r}/{hop!r}")
        return (float(size), float(hop)) if size > 0 else None

    @property
    def n_folds(self) -> int:
        return int(self.folds.shape[0])

    def __len__(self) -> int:
        return len(self.ids)

    def check_fold(self, fold: int) -> None:
        if not 1 <= fold <= self.n_folds:
            raise CacheError(f"{self.url} has folds 1..{self.n_folds}; fold {fold} does not exist")

    def split_indices(self, fold: int, split: str) -> np.ndarray:
        """Indices of the committed clips of ``split`` in ``fold`` (1-based, as papers count)."""
        self.check_fold(fold)
        if split not in L.SPLITS:
            raise CacheError(f"split must be one of {list(L.SPLITS)}, not {split!r}")
        return np.flatnonzero((self.folds[fold - 1] == L.SPLITS[split]) & (self.status == L.DONE))

    # -- features ----------------------------------------------------------------------------
    def _require_done(self, indices: np.ndarray) -> None:
        bad = [int(i) for i in indices if self.status[i] != L.DONE]
        if bad:
            raise CacheError(
                f"clip {self.ids[bad[0]]} of {self.url} is not extracted "
                f"({L.STATUS_NAMES.get(int(self.status[bad[0]]), 'unknown')})"
            )

    def read_features(
        self, indices: np.ndarray, verify: bool = True, modalities: tuple[str, ...] | str | None = None
    ) -> dict[str, list[np.ndarray]]:
        """Valid rows of each modality for committed clips ``indices``, in one bulk read per array.

        Returns ``{"frames": [float16 [T_i, D_img]], "flow": [[P_i, D_img]], "audio": [[A_i, L, D]]}``
        in the order of ``indices`` (only the keys of ``modalities`` when given; default all three).
        Reads only up to the longest valid length among them. With
        ``verify`` (and a store that records digests) the rows are checked against the clip's
        digests: a corrupted, truncated, swapped or missing chunk is a ``CacheError`` naming it.
        """
        from aver.integrity import digest, parse

        if isinstance(modalities, str):
            modalities = (modalities,)
        keys = list(L.FEATURES) if modalities is None else [k for k in L.FEATURES if k in modalities]
        unknown = sorted(set(modalities or ()) - set(L.FEATURES))
        if unknown:
            raise CacheError(f"feature modalities are {', '.join(L.FEATURES)}; not {', '.join(unknown)}")
        idx = np.asarray(indices, dtype=np.int64)
        self._require_done(idx)
        out: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        if not len(idx):
            return out
        stored = self.digests() if verify else None
        recorded = [parse(stored[i]) if stored is not None else {} for i in idx]  # once per clip
        self._refuse_unreadable(keys, idx, recorded if stored is not None else None)
        for key in keys:
            name = L.FEATURES[key]
            n = self.lengths[key][idx]
            # whole rows when verifying: the chunks are decoded whole anyway, and padding is checked
            block = self._read(name, idx, self.group[name].shape[1] if verify else max(int(n.max()), 1))
            for k, i in enumerate(idx):
                rows = np.ascontiguousarray(block[k, : n[k]])
                if verify and np.any(block[k, n[k] :]):
                    raise CacheError(
                        f"{self.url}: damaged cache: {name} of clip {self.ids[i]} holds values past its "
                        f"{n[k]} valid rows (a corrupted chunk); `aver cache verify` lists every damaged clip"
                    )
                if not np.isfinite(rows).all():
                    raise CacheError(
                        f"{self.url}: clip {self.ids[i]} has non-finite values (NaN/inf) in {name}; "
                        "re-extract it (aver extract --retry-failed after marking it) or drop it"
                    )
                want = recorded[k].get(name)
                if want is not None and digest(rows, L.ARRAYS[name].dtype) != want:
                    raise CacheError(
                        f"{self.url}: damaged cache: {name} of clip {self.ids[i]} differs from its recorded "
                        "digest (a corrupted, truncated, swapped or missing chunk); `aver cache verify` "
                        "lists every damaged clip: copy the store again or re-extract them"
                    )
                out[key].append(rows)
        return out

    def _refuse_unreadable(self, keys: list[str], idx: np.ndarray, recorded: list[dict] | None) -> None:
        """Before ``read_features`` reads: modalities ``keys`` left out of a partial pulled copy, and
        clips ``idx`` whose digest record is gone (``recorded``: their parsed records; ``None`` when
        not verifying or the store records no digests)."""
        pulled = self.meta.get("pulled")
        absent = [k for k in keys if pulled and k not in (pulled.get("modalities") or [])]
        if absent:
            raise CacheError(
                f"{self.url} is a partial copy pulled without {absent} (aver cache pull --modality): "
                "pull those modalities too"
            )
        if recorded is not None:
            lost = [str(self.ids[i]) for k, i in enumerate(idx) if not recorded[k]]
            if lost:
                raise CacheError(
                    f"{self.url}: damaged cache: clips {lost[:3]} are committed but their digest record is gone "
                    f"({L.DIGEST}); `aver cache verify` lists every damaged clip: copy the store again or "
                    "re-extract them"
                )

    # -- end-to-end inputs (layout 2) ---------------------------------------------------------
    @property
    def inputs(self) -> dict[str, Any]:
        """``attrs.aver.inputs`` (crops / wave settings and capacities); ``{}`` without inputs."""
        meta = self.meta.get("inputs")
        return dict(meta) if isinstance(meta, dict) and self._has(L.INPUT_STATUS) else {}

    def input_status(self) -> np.ndarray:
        """``int8 [N]`` commit status of each clip's inputs (all pending in a store without them)."""
        if not hasattr(self, "_input_status"):
            self._input_status = (
                self._load(L.INPUT_STATUS) if self.inputs else np.zeros(len(self.ids), np.int8)
            )
        return self._input_status

    def read_inputs(self, indices: np.ndarray, verify: bool = True) -> dict[str, list[np.ndarray]]:
        """Valid crops (``uint8 [K_i, S, S, 3]``), crop frame indices and waveforms (``int16
        [W_i]``; float = value / ``WAVE_SCALE``) of clips ``indices``, checked against their digests."""
        from aver.integrity import input_digests, parse

        idx = np.asarray(indices, dtype=np.int64)
        if not self.inputs:
            raise CacheError(
                f"{self.url} holds no end-to-end inputs: extract with --inputs crops,wave (added to the "
                "existing store without recomputing features)"
            )
        missing = [str(self.ids[i]) for i in idx if self.input_status()[i] != L.DONE]
        if missing:
            raise CacheError(
                f"{self.url}: {len(missing)} clips have no end-to-end inputs yet (e.g. {missing[:3]}): rerun "
                "`aver extract` with the same inputs settings to fill them"
            )
        n_crops, n_wave = self._load(L.N_CROPS)[idx], self._load(L.N_WAVE)[idx]
        crops = self._read(L.CROPS, idx, max(int(n_crops.max(initial=0)), 1))
        index = self._read(L.CROP_INDEX, idx, max(int(n_crops.max(initial=0)), 1))
        wave = self._read(L.WAVE, idx, max(int(n_wave.max(initial=0)), 1))
        digests = self._load(L.INPUT_DIGEST)[idx] if verify else None
        out: dict[str, list[np.ndarray]] = {"crops": [], "crop_index": [], "wave": []}
        for k, i in enumerate(idx):
            c, x, w = crops[k, : n_crops[k]], index[k, : n_crops[k]], wave[k, : n_wave[k]]
            if digests is not None and (not parse(digests[k]) or digests[k] != input_digests(c, x, w)):
                raise CacheError(
                    f"{self.url}: damaged cache: the inputs of clip {self.ids[i]} differ from their recorded "
                    "digest; copy the store again or re-extract them"
                )
            out["crops"].append(np.ascontiguousarray(c))
            out["crop_index"].append(np.ascontiguousarray(x))
            out["wave"].append(np.ascontiguousarray(w))
        return out

    def digests(self) -> np.ndarray | None:
        """``clips/digest`` (JSON text per clip), or None for a store written before aver 0.3."""
        if not hasattr(self, "_digests"):
            self._digests = self._load(L.DIGEST) if self._has(L.DIGEST) else None
        return self._digests

    def verify(
        self, progress: bool = False, indices: np.ndarray | None = None, skip: frozenset = frozenset()
    ) -> tuple[list, int, int]:
        """Check the clip table and every committed clip (features, scalars, its table row, notes and
        inputs; failed clips: their error text) against their digests (``aver.integrity``), or only
        clips ``indices`` (and not the arrays in ``skip``): returns ``(problems, verified clips, clips
        without digests)``."""
        from aver.integrity import verify_cache

        return verify_cache(self, progress, indices, skip)

    def _verify_failures(self, digests: np.ndarray | None, chosen: np.ndarray) -> list:
        """Failed clips: the error text against its digest (recorded since aver 0.5)."""
        from aver.integrity import Problem, digest, parse

        out = []
        for i in np.flatnonzero((self.status == L.FAILED) & chosen) if digests is not None else []:
            want = parse(digests[i]).get(L.ERROR)
            if want is None:
                continue
            try:
                ok = digest(self.group[L.ERROR][int(i)], "str") == want
            except Exception:  # noqa: BLE001 - undecodable
                ok = False
            if not ok:
                out.append(Problem(str(self.ids[i]), L.ERROR, "content differs from its digest"))
        return out

    def _read(self, name: str, idx: np.ndarray, length: int) -> np.ndarray:
        """``name[idx, :length]`` in one bulk read; a chunk that cannot be decoded is named."""
        arr = self.group[name]
        try:
            return arr.get_orthogonal_selection((idx.tolist(), slice(0, length)))
        except Exception:  # noqa: BLE001 - find the damaged clip, then say which one it is
            for i in idx:
                try:
                    arr[int(i), :length]
                except Exception as e:  # noqa: BLE001
                    raise CacheError(
                        f"{self.url}: damaged cache: {name} of clip {self.ids[i]} (row {int(i)}) cannot be read "
                        f"({type(e).__name__}: {e}); copy the store again or re-extract that clip"
                    ) from None
            raise

    def clip(self, i: int) -> ClipFeatures:
        """The valid rows of clip ``i`` (a committed clip; others raise ``CacheError``)."""
        feats = self.read_features(np.array([i]))
        return ClipFeatures(
            clip_id=str(self.ids[i]),
            frames=feats["frames"][0],
            flow=feats["flow"][0],
            audio=feats["audio"][0],
            label=int(self.labels[i]),
            targets=self.targets[i],
        )

    def array(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Any layout array by name (``aver.layout``), whole or for ``rows`` of clips."""
        if name not in L.ARRAYS or not self._has(name):
            raise CacheError(f"{self.url} has no array {name!r}")
        arr = self.group[name]
        return arr[:] if rows is None else arr[rows]


def _strings(values: np.ndarray) -> list[str]:
    """A stored text array (numpy ``StringDType`` from zarr, or object) as Python strings."""
    return [str(v) for v in values]


def _named(pd: Any, codes: np.ndarray, names: dict[int, str]) -> Any:
    """Integer ``codes`` as a pandas ``Categorical`` of their ``names`` (every name a category, in
    the order of ``names``, so counts list the empty ones too)."""
    positions = np.full(codes.shape, -1, dtype=np.int64)
    for k, code in enumerate(names):
        positions[codes == code] = k
    return pd.Categorical.from_codes(positions, categories=list(names.values()))


def open_cache(path_or_url: Any, storage_options: dict | None = None) -> FeatureCache:
    """Open a feature cache for reading: a local path (``~`` expanded; a packed ``.zip`` too) or an
    fsspec URL (``s3://…`` with ``storage_options``). The notebook entry point, ``aver.open_cache``:
    ``cache.table`` is the clip table, ``cache.dataset(fold, split)`` a torch ``Dataset``."""
    import os

    url = os.fspath(path_or_url)
    if "://" not in url:
        url = os.path.expanduser(url)
    return FeatureCache(url, storage_options)
