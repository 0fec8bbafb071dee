"""Content digests of committed clips, and the check of a whole store against them.

When a clip is committed, the writer records in ``clips/digest`` (one JSON object per clip, written
before ``clips/status``, so the commit protocol holds) the sha256 (first 32 hex digits) of the bytes
of each of its per-clip arrays: the valid rows of the time-axis arrays (``frames/features[:n_frames]``,
``flow/features[:n_flow]``, ...) and the scalars. Reading recomputes them: ``verify_store`` checks every
clip (and that padding holds the fill value), ``FeatureCache.read_features`` checks the features it
returns. A flipped byte, a truncated, deleted or swapped chunk shows as a digest that differs, or a
chunk that cannot be decoded, named by clip and array.
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


def digest(values: Any, dtype: str) -> str:
    """sha256 (32 hex digits) of ``values`` as the layout stores them (``dtype``; text as UTF-8)."""
    if dtype == "str":
        data = str(values).encode("utf-8")
    else:
        data = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<"))).tobytes()
    return hashlib.sha256(data).hexdigest()[:32]


def clip_digests(rows: dict[str, Any], note: str | None) -> str:
    """The ``clips/digest`` value of a clip: ``rows`` maps each array of ``TIME_ARRAYS`` to its valid
    rows and each of ``SCALARS`` to its value; ``note`` is included when the store has notes."""
    out = {name: digest(value, L.ARRAYS[name].dtype) for name, value in rows.items()}
    if note is not None:
        out[L.NOTE] = digest(note, "str")
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

    def __str__(self) -> str:
        return f"clip {self.clip}: {self.array}: {self.what}"


def parse(text: str) -> dict[str, str]:
    """A clip's digests, ``{}`` when it has none (committed before aver 0.3, or not committed)."""
    if not text:
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        return {"": "unreadable"}
    return d if isinstance(d, dict) and all(isinstance(v, str) for v in d.values()) else {"": "unreadable"}


def verify_clip(group, i: int, clip: str, recorded: dict[str, str], has_notes: bool) -> list[Problem]:
    """Every array of committed clip ``i`` against its recorded digests; padding must be fill."""
    if not recorded:
        return [Problem(clip, L.DIGEST, "no digest recorded (committed before aver 0.3): cannot be verified")]
    if "" in recorded:
        return [Problem(clip, L.DIGEST, "the digest record is damaged")]
    problems, scalars = [], {}
    for name in SCALARS:
        try:
            scalars[name] = group[name][i]
        except Exception as e:  # noqa: BLE001 - any decoder error
            problems.append(Problem(clip, name, f"cannot be read ({type(e).__name__}: {e})"))
            continue
        if digest(scalars[name], L.ARRAYS[name].dtype) != recorded.get(name):
            problems.append(Problem(clip, name, "content differs from its digest"))
    for name, length in TIME_ARRAYS.items():
        try:
            row = group[name][i]
        except Exception as e:  # noqa: BLE001
            problems.append(Problem(clip, name, f"chunk cannot be decoded ({type(e).__name__}: {e})"))
            continue
        n = int(scalars.get(length, -1))
        if not 0 <= n <= len(row):
            continue  # the length itself is reported above
        if digest(row[:n], L.ARRAYS[name].dtype) != recorded.get(name):
            missing = n > 0 and not np.any(row)
            problems.append(
                Problem(
                    clip,
                    name,
                    "chunk missing (reads as the fill value)"
                    if missing
                    else "content differs from its digest",
                )
            )
        elif np.any(row[n:]):
            problems.append(Problem(clip, name, "padding past the valid rows is not zero"))
    if has_notes and L.NOTE in recorded:
        try:
            if digest(group[L.NOTE][i], "str") != recorded[L.NOTE]:
                problems.append(Problem(clip, L.NOTE, "content differs from its digest"))
        except Exception as e:  # noqa: BLE001
            problems.append(Problem(clip, L.NOTE, f"cannot be read ({type(e).__name__}: {e})"))
    return problems
