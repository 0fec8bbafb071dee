"""``aver cache pack``: a read-optimised copy of a working store, for sharing.

The working store has one chunk per clip and array (parallel writers never share an object); a
RAVDESS cache is ~17,000 objects, and loading a fold from object storage costs ~14 requests per clip.
The packed copy holds the same arrays and attributes, and:

- the per-clip data arrays (``frames/*``, ``flow/features``, ``audio/features``) in Zarr v3 shards
  of ``shard_clips`` clips (inner chunks stay one clip each, so one clip is still one range read);
- the per-clip scalars and texts (status, lengths, fps, notes, digests, errors) as whole arrays;
- consolidated metadata (one read opens the store);
- xarray metadata: dimension names on every array, the coordinates ``clip`` (ids), ``fold``
  (1..K) and ``layer`` (the stored hidden-state indices) at the root, inherited by every group of
  ``xarray.open_datatree``, and CF-style attributes (``long_name``, ``units``, ``flag_values`` /
  ``flag_meanings`` for code tables).

It is written under an ``incomplete`` template marker, verified against the clips' digests, and
only then marked complete. A packed store is read-only: ``aver extract`` refuses to write into it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from aver import layout as L
from aver.cache import FeatureCache
from aver.errors import CacheError, UserError
from aver.identity import is_local, local_path, refuse_overlap
from aver.info import storage_size

log = logging.getLogger(__name__)

# CF-style descriptions of the arrays (``units`` "1": dimensionless).
DESCRIPTIONS = {
    L.CLIP_ID: ("clip id", None),
    L.SPEAKER: ("speaker id", None),
    L.VIDEO: ("video path relative to the raw-data root", None),
    L.LABEL: ("class label (index into the classes; -1 none)", "1"),
    L.TARGETS: ("continuous targets", "1"),
    L.SOFT_LABEL: ("consensus label distribution", "1"),
    L.STATUS: ("commit status", "1"),
    L.ERROR: ("cause of a failure", None),
    L.NOTE: ("what was cut or kept", None),
    L.DIGEST: ("sha256 content digests of the clip's arrays (JSON)", None),
    L.N_FRAMES: ("valid frames", "1"),
    L.N_FLOW: ("valid flow maps", "1"),
    L.N_AUDIO: ("valid audio frames", "1"),
    L.FPS: ("native frame rate", "Hz"),
    L.FRAME_FEATURES: ("EfficientNet features of the face crops", "1"),
    L.TIMESTAMP: ("presentation time of each frame", "s"),
    L.FACE_BOX: ("smoothed square crop box x1, y1, x2, y2", "pixel"),
    L.FACE_PROB: ("MTCNN probability of the tracked face", "1"),
    L.FACE_MASK: ("face detected (else interpolated)", "1"),
    L.FLOW_FEATURES: ("EfficientNet features of the flow images", "1"),
    L.AUDIO_FEATURES: ("wav2vec2 hidden states", "1"),
    L.FOLD_SPLIT: ("split of each clip in each fold", "1"),
    L.CROPS: ("face crops, RGB channels last", "1"),
    L.CROP_INDEX: ("frame of each stored crop (-1 none)", "1"),
    L.N_CROPS: ("valid crops", "1"),
    L.WAVE: ("16 kHz mono waveform, 16-bit PCM (divide by 32768)", "1"),
    L.N_WAVE: ("valid waveform samples", "1"),
    L.INPUT_STATUS: ("commit status of the end-to-end inputs", "1"),
    L.INPUT_DIGEST: ("sha256 content digests of the clip's inputs (JSON)", None),
}


def _attributes(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    long_name, units = DESCRIPTIONS[name]
    out: dict[str, Any] = {"long_name": long_name}
    if units:
        out["units"] = units
    if name in (L.STATUS, L.INPUT_STATUS):
        out.update(flag_values=list(L.STATUS_NAMES), flag_meanings=" ".join(L.STATUS_NAMES.values()))
    elif name == L.FOLD_SPLIT:
        out.update(flag_values=list(L.SPLIT_CODES.values()), flag_meanings=" ".join(L.SPLIT_CODES))
    elif name == L.LABEL and meta.get("classes"):
        classes = [c.replace(" ", "_") for c in meta["classes"]]
        out.update(flag_values=list(range(-1, len(classes))), flag_meanings=" ".join(["none", *classes]))
    elif name == L.TARGETS and meta.get("targets"):
        out["target_names"] = list(meta["targets"])
    return out


def pack(
    src: str,
    dest: str,
    *,
    zip_file: bool | None = None,
    shard_clips: int = 64,
    storage_options: dict | None = None,
    dest_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the packed copy of ``src`` at ``dest`` and verify it; returns a summary
    (``clips``, ``verified``, ``objects`` and ``bytes`` of both stores). A local ``dest`` ending in
    ``.zip`` (or ``zip_file``) is written as one uncompressed zip file (read-only, opened by aver
    and by ``zarr.storage.ZipStore``): packed in a folder beside it, verified, then zipped.

    Not idempotent: an existing ``dest`` is replaced only with ``overwrite``. A ``dest`` that is
    ``src`` (by any spelling), lies inside it or holds it is refused before anything is written. A
    copy interrupted or failing verification stays marked incomplete, and the marker names the
    rerun (``remedy``); a zip pack removes its temporary folder when it fails."""
    refuse_overlap("pack", [src], dest, storage_options, dest_options)
    if shard_clips < 1:
        raise UserError(f"--shard-clips must be >= 1, not {shard_clips}")
    rerun = _rerun(src, dest, shard_clips)
    if zip_file or (zip_file is None and dest.endswith(".zip")):
        return _pack_zip(src, dest, shard_clips, storage_options, overwrite, progress, rerun)
    if L.store_exists(dest, dest_options) and not overwrite:
        raise UserError(f"{dest} exists: choose another destination or pass --overwrite")
    return _pack_store(src, dest, shard_clips, storage_options, dest_options, progress, rerun)


def _rerun(src: str, dest: str, shard_clips: int) -> str:
    """The command that packs ``src`` into ``dest`` again, replacing what is there."""
    import shlex

    shards = "" if shard_clips == 64 else f" --shard-clips {shard_clips}"
    return f"aver cache pack {shlex.quote(src)} {shlex.quote(dest)}{shards} --overwrite"


def _incomplete(remedy: str) -> dict[str, Any]:
    """The template marker of a copy not (or no longer) fit to read: ``FeatureCache`` refuses it,
    and ``remedy`` says what to do (pack is not resumable: it is rerun with ``--overwrite``)."""
    return {L.TEMPLATE_KEY: "incomplete", "layout_version": L.LAYOUT_VERSION, "remedy": remedy}


def _pack_store(src, dest, shard_clips, storage_options, dest_options, progress, rerun) -> dict[str, Any]:
    """``pack`` into a Zarr store at ``dest`` (a folder or URL), written under the incomplete
    marker, which names ``rerun`` should the run be killed."""
    from tqdm import tqdm

    cache = FeatureCache(src, storage_options)
    cache.require_intact()  # refuse before writing: a packed copy of a damaged store would not verify
    g = L.open_root(dest, "w", dest_options)
    g.attrs[L.ATTRS_KEY] = _incomplete(f"a pack into it was interrupted; rerun `{rerun}`")
    n = len(cache.ids)
    present = [name for name in L.ARRAYS if cache._has(name)]
    bar = tqdm(total=len(present), desc="pack", unit="array", disable=not progress, leave=False)
    for name in present:
        _copy(cache.group[name], g, L.ARRAYS[name], cache.meta, n, shard_clips)
        bar.update(1)
    bar.close()
    _coordinates(g, cache)  # the working store may predate them (aver < 0.3)
    meta = dict(cache.meta)
    meta["packed"] = {"shard_clips": shard_clips, "source": src}
    g.attrs[L.ATTRS_KEY] = meta
    verified, unverifiable = _finish(g, dest, dest_options, src, progress, rerun)
    before, after = storage_size(src, storage_options), storage_size(dest, dest_options)
    return {
        "clips": n,
        "verified": verified,
        "unverifiable": unverifiable,
        "objects": (before[0], after[0]),
        "bytes": (before[1], after[1]),
    }


def _finish(g, dest: str, dest_options: dict | None, src: str, progress: bool, rerun: str) -> tuple[int, int]:
    """Consolidate the metadata and verify the copy; a copy that fails verification is marked
    incomplete again, so that no reader takes it. Returns (verified clips, clips without digests)."""
    import warnings

    import zarr

    with warnings.catch_warnings():  # zarr notes that consolidated metadata is not yet in the v3 spec
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(g.store)
    problems, verified, unverifiable = FeatureCache(dest, dest_options).verify(progress=progress)
    if problems:
        L.open_root(dest, "r+", dest_options).attrs[L.ATTRS_KEY] = _incomplete(
            f"the packed copy did not verify, its source {src} is damaged (`aver cache verify {src}` "
            f"names the clips); repair or re-extract the source, then rerun `{rerun}`"
        )
        raise CacheError(
            f"{dest}: the packed copy does not verify: {problems[0]} (and {len(problems) - 1} more); "
            f"the source is damaged (aver cache verify {src}); {dest} is left marked incomplete"
        )
    return verified, unverifiable


def _pack_zip(src, dest, shard_clips, storage_options, overwrite, progress, rerun) -> dict[str, Any]:
    """``pack`` into one zip file: packed into ``<dest>.packing.zarr`` beside it, verified, zipped
    into ``<dest>.partial`` and renamed. Both temporaries are removed when the pack fails (and at
    the start of the next run, should it have been killed)."""
    import shutil
    from pathlib import Path

    if "://" in dest and not is_local(dest):
        raise UserError(f"{dest}: a zipped copy is written to a local path (copy the file to share it)")
    target = Path(local_path(dest))
    if target.exists() and not overwrite:
        raise UserError(f"{dest} exists: choose another destination or pass --overwrite")
    folder = target.with_name(target.name + ".packing.zarr")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(folder, ignore_errors=True)  # what a killed run left
    try:
        summary = _pack_store(src, str(folder), shard_clips, storage_options, None, progress, rerun)
        _zip_folder(folder, partial)
        os.replace(partial, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        partial.unlink(missing_ok=True)
    problems = FeatureCache(str(target)).verify()[0]
    if problems:
        raise CacheError(f"{dest}: the zipped copy does not verify: {problems[0]}")
    summary["objects"] = (summary["objects"][0], 1)
    summary["bytes"] = (summary["bytes"][0], storage_size(str(target))[1])
    return summary


def _zip_folder(folder, zip_path) -> None:
    """Every file under ``folder`` into an uncompressed zip (the chunks are compressed already)."""
    import zipfile
    from pathlib import Path

    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as z:
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                full = Path(root) / name
                z.write(full, full.relative_to(folder).as_posix())


def _copy(src_arr, g, spec: L.ArraySpec, meta: dict[str, Any], n: int, shard_clips: int) -> None:
    """One array: data arrays sharded by clips (inner chunk one clip), the rest one whole chunk."""
    from aver.store import create_array

    shape = tuple(src_arr.shape)
    big = spec.name in (*L.CLIP_DATA, *L.INPUT_DATA)
    chunks = (1, *shape[1:]) if big else tuple(max(s, 1) for s in shape)
    shards = (max(min(shard_clips, n), 1), *shape[1:]) if big else None
    arr = create_array(g, spec, shape, chunks, shards=shards, attributes=_attributes(spec.name, meta))
    step = shards[0] if shards else max(shape[0], 1)
    for start in range(0, max(shape[0], 1), step):
        block = src_arr[start : start + step]
        if np.size(block):
            arr[start : start + step] = block


def _coordinates(g, cache: FeatureCache) -> None:
    """Root coordinates that every group inherits in ``xarray.open_datatree``."""
    from aver.store import write_coordinates

    layers = ((cache.meta.get("config") or {}).get("audio") or {}).get("layers")
    n_layers = int(cache.meta["dims"]["audio_layers"])
    if not isinstance(layers, list) or len(layers) != n_layers:
        layers = list(range(n_layers))
    write_coordinates(g, [str(i) for i in cache.ids], cache.n_folds, layers)
