"""Content digests of a store: the clip table, and every committed clip's arrays.

The clip table (ids, speakers, videos, labels, targets, soft labels, folds, and the xarray
coordinates) is written once with the template; its digests go into ``attrs.aver.table_digest``
(one per array, of its values, so a packed or re-chunked copy keeps them). When a clip is
committed, the writer records in ``clips/digest`` (one JSON object per clip, written before
``clips/status``, so the commit protocol holds) the sha256 (first 32 hex digits) of the bytes of
each of its per-clip arrays: the valid rows of the time-axis arrays (``frames/features[:n_frames]``,
``flow/features[:n_flow]``, ...), the scalars, and its row of the clip table (``table``), so a
changed label or split is named by clip. A failed clip records the digest of its error text; the
inputs (``inputs/*``) have their own digests (``inputs/digest``).

Reading recomputes them: ``FeatureCache`` checks the table and the agreement of each clip's status
with its digest record when it opens a store (``FeatureCache.damage``), ``FeatureCache.verify`` checks
every clip (and that padding holds the fill value), ``read_features`` / ``read_inputs`` check what
they return. A flipped byte, a truncated, deleted or swapped chunk shows as a digest that differs,
a record that is missing, or a chunk that cannot be decoded, named by clip and array.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from aver import layout as L

# The per-clip arrays a digest covers, and the length (by ``clips/n_*``) of their valid rows.
TIME_ARRAYS = {
    L.FRAME_FEATURES: L.N_FRAMES,
    L.FLOW_FEATURES: L.N_FLOW,
    L.AUDIO_FEATURES: L.N_AUDIO,
    L.TIMESTAMP: L.N_FRAMES,
    L.FACE_BOX: L.N_FRAMES,
    L.FACE_PROB: L.N_FRAMES,
    L.FACE_MASK: L.N_FRAMES,
}
SCALARS = (L.N_FRAMES, L.N_FLOW, L.N_AUDIO, L.FPS)
# The clip table (written once, with the template) and the xarray coordinates beside it.
TABLE_ARRAYS = (L.CLIP_ID, L.SPEAKER, L.VIDEO, L.LABEL, L.TARGETS, L.SOFT_LABEL, L.FOLD_SPLIT)
COORDINATES = {"clip": "str", "fold": "int16", "layer": "int16"}
TABLE_KEY = "table:"  # prefix of the keys of a clip's row of the clip table in its clips/digest record
TABLE_DIGEST = "table_digest"  # attrs.aver key: {array: digest of its values}
# The input arrays an inputs/digest record covers, and the length of their valid rows.
INPUT_TIME_ARRAYS = {L.CROPS: L.N_CROPS, L.CROP_INDEX: L.N_CROPS, L.WAVE: L.N_WAVE}


def digest(values: Any, dtype: str) -> str:
    """sha256 (32 hex digits) of ``values`` as the layout stores them (``dtype``; text as UTF-8)."""
    if dtype == "str":
        data = str(values).encode("utf-8")
    else:
        data = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<"))).tobytes()
    return hashlib.sha256(data).hexdigest()[:32]


def array_digest(values: Any, dtype: str) -> str:
    """Digest of a whole array's values and shape (text: UTF-8, NUL-separated): the same for any
    chunking or compression of the same values."""
    arr = np.asarray(values)
    if dtype == "str":
        data = "\x00".join(str(v) for v in arr.ravel()).encode("utf-8")
    else:
        data = np.ascontiguousarray(arr.astype(np.dtype(dtype).newbyteorder("<"))).tobytes()
    return hashlib.sha256(repr(arr.shape).encode() + b"|" + data).hexdigest()[:32]


def table_digests(columns: dict[str, np.ndarray | None]) -> dict[str, str]:
    """``attrs.aver.table_digest``: the digest of each clip-table array (and coordinate) present."""
    dtypes = {name: L.ARRAYS[name].dtype for name in TABLE_ARRAYS} | COORDINATES
    return {name: array_digest(v, dtypes[name]) for name, v in columns.items() if v is not None}


def row_digests(columns: dict[str, np.ndarray | None], i: int) -> dict[str, str]:
    """``{"table:<array>": digest}`` of clip ``i``'s row of each clip-table array (folds: its column)."""
    out = {}
    for name in TABLE_ARRAYS:
        v = columns.get(name)
        if v is not None:
            row = v[:, i] if name == L.FOLD_SPLIT else v[i]
            out[TABLE_KEY + name] = array_digest(row, L.ARRAYS[name].dtype)
    return out


def failure_digests(cause: str) -> str:
    """The ``clips/digest`` record of a failed clip: its error text."""
    return json.dumps({L.ERROR: digest(cause, "str")}, sort_keys=True, separators=(",", ":"))


def clip_digests(rows: dict[str, Any], note: str | None, table: dict[str, str] | None = None) -> str:
    """The ``clips/digest`` value of a clip: ``rows`` maps each array of ``TIME_ARRAYS`` to its valid
    rows and each of ``SCALARS`` to its value; ``note`` is included when the store has notes."""
    out = {name: digest(value, L.ARRAYS[name].dtype) for name, value in rows.items()}
    if note is not None:
        out[L.NOTE] = digest(note, "str")
    out.update(table or {})
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def input_digests(crops: np.ndarray, crop_index: np.ndarray, wave: np.ndarray) -> str:
    """The ``inputs/digest`` value of a clip: its valid crops, crop frame indices and waveform."""
    rows = {
        L.CROPS: crops,
        L.CROP_INDEX: crop_index,
        L.WAVE: wave,
        L.N_CROPS: len(crops),
        L.N_WAVE: len(wave),
    }
    out = {name: digest(value, L.ARRAYS[name].dtype) for name, value in rows.items()}
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


@dataclass
class Problem:
    """One thing wrong with one clip's array."""

    clip: str
    array: str
    what: str

    @property
    def table(self) -> bool:
        """A problem of the store's clip table as a whole, not of one clip."""
        return self.clip.startswith("(")

    def __str__(self) -> str:
        where = self.clip.strip("()") if self.table else f"clip {self.clip}"
        return f"{where}: {self.array}: {self.what}"


def parse(text: str) -> dict[str, str]:
    """A clip's digests, ``{}`` when it has none (committed before aver 0.3, or not committed)."""
    if not text:
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        return {"": "unreadable"}
    return d if isinstance(d, dict) and all(isinstance(v, str) for v in d.values()) else {"": "unreadable"}


def verify_table_row(clip: str, recorded: dict[str, str], row: dict[str, str]) -> list[Problem]:
    """Clip ``clip``'s row of the clip table (as loaded: ``row_digests``) against its record."""
    return [
        Problem(clip, key[len(TABLE_KEY) :], "its row of the clip table differs from its digest")
        for key, want in recorded.items()
        if key.startswith(TABLE_KEY) and row.get(key) != want
    ]


def verify_clip(
    group, i: int, clip: str, recorded: dict[str, str], has_notes: bool, skip: frozenset = frozenset()
) -> list[Problem]:
    """Every array of committed clip ``i`` (but ``skip``) against its recorded digests; padding
    must be fill."""
    if not recorded:
        return [Problem(clip, L.DIGEST, "no digest recorded (committed before aver 0.3): cannot be verified")]
    if "" in recorded:
        return [Problem(clip, L.DIGEST, "the digest record is damaged")]
    arrays = {k: v for k, v in TIME_ARRAYS.items() if k not in skip}
    problems = verify_rows(group, i, clip, recorded, arrays, SCALARS)
    if has_notes and L.NOTE in recorded:
        try:
            if digest(group[L.NOTE][i], "str") != recorded[L.NOTE]:
                problems.append(Problem(clip, L.NOTE, "content differs from its digest"))
        except Exception as e:  # noqa: BLE001
            problems.append(Problem(clip, L.NOTE, f"cannot be read ({type(e).__name__}: {e})"))
    return problems


def verify_rows(
    group, i: int, clip: str, recorded: dict[str, str], arrays: dict[str, str], scalars=None
) -> list[Problem]:
    """The valid rows of ``arrays`` (``{array: its length scalar}``) of clip ``i`` against ``recorded``,
    and the ``scalars`` (default: the length scalars) read clip by clip."""
    problems, values = [], {}
    for name in scalars or tuple(dict.fromkeys(arrays.values())):
        try:
            values[name] = group[name][i]
        except Exception as e:  # noqa: BLE001 - any decoder error
            problems.append(Problem(clip, name, f"cannot be read ({type(e).__name__}: {e})"))
            continue
        if digest(values[name], L.ARRAYS[name].dtype) != recorded.get(name):
            problems.append(Problem(clip, name, "content differs from its digest"))
    for name, length in arrays.items():
        try:
            row = group[name][i]
        except Exception as e:  # noqa: BLE001
            problems.append(Problem(clip, name, f"chunk cannot be decoded ({type(e).__name__}: {e})"))
            continue
        problems += row_problems(clip, name, row, int(values.get(length, -1)), recorded.get(name))
    return problems


def row_problems(clip: str, name: str, row: np.ndarray, n: int, want: str | None) -> list[Problem]:
    """One clip's row of array ``name`` (its ``n`` valid rows against digest ``want``; the padding
    after them must hold the fill value). An invalid ``n`` is reported with its own array."""
    if not 0 <= n <= len(row):
        return []
    fill = L.ARRAYS[name].fill
    if digest(row[:n], L.ARRAYS[name].dtype) != want:
        missing = n > 0 and name in TIME_ARRAYS and not np.any(row)
        return [
            Problem(
                clip,
                name,
                "chunk missing (reads as the fill value)" if missing else "content differs from its digest",
            )
        ]
    if np.any(row[n:] != fill):
        return [Problem(clip, name, "padding past the valid rows is not the fill value")]
    return []


def commit_problems(ids, status, records: list[dict[str, str]], status_name: str, digest_name: str) -> list:
    """Clips whose status and digest record disagree (the commit protocol writes the record first):
    a done clip without a record (a deleted or damaged record chunk), a pending clip with one (a
    damaged status chunk, or a commit killed between the two writes), a failed clip with a data record."""
    out = []
    for i, (code, rec) in enumerate(zip(status.tolist(), records, strict=True)):
        clip = str(ids[i])
        if code == L.DONE and not rec:
            out.append(
                Problem(clip, digest_name, "missing: the clip is committed but its digest record is gone")
            )
        elif code == L.DONE and "" in rec:
            out.append(Problem(clip, digest_name, "the digest record is damaged"))
        elif code == L.PENDING and rec:
            out.append(
                Problem(
                    clip,
                    status_name,
                    "reads pending but the clip's digest is recorded: a damaged status chunk, or a commit "
                    "that was killed (rerun `aver extract` to commit it again)",
                )
            )
        elif code == L.FAILED and rec and set(rec) - {L.ERROR}:
            out.append(Problem(clip, status_name, "reads failed but the clip's data digest is recorded"))
    return out


CHUNK = 32  # clips verified per bulk read of each array


def verify_cache(cache, progress: bool, indices, skip: frozenset) -> tuple[list, int, int]:
    """``FeatureCache.verify``: the store's recorded damage, then every chosen committed clip in bulk
    reads of ``CHUNK`` clips per array (a chunk that cannot be decoded: clip by clip, to name it)."""
    from tqdm import tqdm

    n = len(cache.ids)
    chosen = np.ones(n, bool) if indices is None else np.isin(np.arange(n), indices)
    names = {str(cache.ids[i]) for i in np.flatnonzero(chosen)}
    problems = [p for p in cache.damage if p.clip in names or p.clip.startswith("(")]
    digests = cache.digests()
    done = np.flatnonzero((cache.status == L.DONE) & chosen)
    records = {int(i): parse(digests[i]) for i in done} if digests is not None else {}
    unverifiable = len(done) if digests is None else 0
    ctx = _Context(cache, skip)
    bar = tqdm(total=len(done), desc="verify", unit="clip", disable=not progress, leave=False)
    for start in range(0, len(done) if digests is not None else 0, CHUNK):
        idx = done[start : start + CHUNK]
        problems += ctx.block(idx, [records[int(i)] for i in idx])
        bar.update(len(idx))
    bar.close()
    problems += cache._verify_failures(digests, chosen)
    if digests is not None and TABLE_DIGEST not in cache.meta:
        import logging

        logging.getLogger(__name__).warning(
            "%s: the clip table has no digest (written before aver 0.5): labels and folds are not verified",
            cache.url,
        )
    damaged = {p.clip for p in problems if not p.table}
    verified = sum(1 for i in done if str(cache.ids[i]) not in damaged) - unverifiable
    return problems, verified, unverifiable


class _Context:
    """What verifying a block of clips reads once: whole scalar arrays, the table, notes, inputs."""

    def __init__(self, cache, skip: frozenset) -> None:
        self.cache, self.skip, g = cache, skip, cache.group
        self.has_notes = cache._has(L.NOTE)
        self.scalars = {L.LENGTHS[k]: v for k, v in cache.lengths.items()} | {L.FPS: cache._load(L.FPS)}
        self.notes = cache.notes() if self.has_notes else None
        self.columns = {name: cache._table_column(name) for name in TABLE_ARRAYS}
        self.inputs = None
        if cache.inputs:
            self.inputs = [parse(d) for d in cache._load(L.INPUT_DIGEST)]
            self.scalars |= {L.N_CROPS: cache._load(L.N_CROPS), L.N_WAVE: cache._load(L.N_WAVE)}
        self.arrays = {k: v for k, v in TIME_ARRAYS.items() if k not in skip}
        self.group = g

    def block(self, idx: np.ndarray, records: list[dict[str, str]]) -> list[Problem]:
        inputs = self.inputs is not None and any(self.cache.input_status()[i] == L.DONE for i in idx)
        arrays = {**self.arrays, **(INPUT_TIME_ARRAYS if inputs else {})}
        try:
            blocks = {
                name: self.group[name].get_orthogonal_selection((idx.tolist(), slice(None)))
                for name in arrays
            }
        except Exception:  # noqa: BLE001 - an undecodable chunk: clip by clip names it
            blocks = None
        out = []
        for k, i in enumerate(idx):
            clip, rec = str(self.cache.ids[i]), records[k]
            if not rec or "" in rec:
                continue  # named when the store was opened (``commit_problems``)
            if blocks is None:
                out += verify_clip(self.group, int(i), clip, rec, self.has_notes, self.skip)
            else:
                out += self._rows(blocks, k, int(i), clip, rec, self.arrays)
            out += verify_table_row(clip, rec, row_digests(self.columns, int(i)))
            if inputs and self.cache.input_status()[i] == L.DONE and self.inputs[i]:
                if blocks is None:
                    out += verify_rows(self.group, int(i), clip, self.inputs[i], INPUT_TIME_ARRAYS)
                else:
                    out += self._rows(blocks, k, int(i), clip, self.inputs[i], INPUT_TIME_ARRAYS)
        return out

    def _rows(self, blocks, k: int, i: int, clip: str, rec: dict, arrays: dict) -> list[Problem]:
        """Clip ``i``'s scalars and valid rows (row ``k`` of ``blocks``) against ``rec``; padding fill."""
        out = []
        scalar_names = SCALARS if arrays is self.arrays else tuple(dict.fromkeys(arrays.values()))
        for name in scalar_names:
            if digest(self.scalars[name][i], L.ARRAYS[name].dtype) != rec.get(name):
                out.append(Problem(clip, name, "content differs from its digest"))
        for name, length in arrays.items():
            row = blocks[name][k]
            out += row_problems(clip, name, row, int(self.scalars[length][i]), rec.get(name))
        if arrays is self.arrays and self.has_notes and L.NOTE in rec:
            if digest(self.notes[i], "str") != rec[L.NOTE]:
                out.append(Problem(clip, L.NOTE, "content differs from its digest"))
        return out
