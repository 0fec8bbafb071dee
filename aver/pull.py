"""``aver cache pull``: copy from a shared store just the clips (and modalities) a job needs.

``pull(URL, DEST, fold=K, splits=[...], modalities=[...])`` writes a local working store with the
source's template (clip table, labels, folds, attributes) and, of the committed clips in the chosen
splits of fold K (every committed clip without a fold), the rows of the chosen modalities. It is
resumable (clips already in DEST are skipped), shows a progress bar, and verifies every pulled clip
against its digests. ``attrs.aver.pulled`` records what was pulled; reading a modality that was
not pulled is refused by name, so training (which reads all three) needs them all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aver import layout as L
from aver.cache import FeatureCache
from aver.errors import CacheError, UserError
from aver.identity import refuse_overlap

# The arrays of each modality (the per-clip face track travels with the frames).
MODALITY_ARRAYS = {
    "frames": (L.FRAME_FEATURES, L.TIMESTAMP, L.FACE_BOX, L.FACE_PROB, L.FACE_MASK),
    "flow": (L.FLOW_FEATURES,),
    "audio": (L.AUDIO_FEATURES,),
    # end-to-end inputs (crops, waveforms), pulled by default when the source has them
    "inputs": (L.CROPS, L.CROP_INDEX, L.N_CROPS, L.WAVE, L.N_WAVE, L.INPUT_DIGEST, L.INPUT_STATUS),
}
ALWAYS = (*L.CLIP_SCALARS, L.ERROR, L.NOTE, L.DIGEST)


def pull(
    url: str,
    dest: str,
    *,
    fold: int | None = None,
    splits: list[str] | None = None,
    modalities: list[str] | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pull into ``dest``; returns ``{"clips", "pulled", "skipped"}``. A ``dest`` that is the
    source (by any spelling), lies inside it or holds it is refused before anything is opened."""
    from tqdm import tqdm

    from aver.store import CacheWriter

    refuse_overlap("pull", [url], dest, storage_options)
    unknown = [m for m in modalities or [] if m not in MODALITY_ARRAYS]
    if unknown:
        raise UserError(f"--modality {unknown}: choose from {list(MODALITY_ARRAYS)}")
    src = FeatureCache(url, storage_options)
    modalities = list(modalities or [m for m in MODALITY_ARRAYS if m != "inputs" or src.inputs])
    if "inputs" in modalities and not src.inputs:
        raise UserError(f"--modality inputs: {url} holds no end-to-end inputs (crops, waveforms)")
    splits = list(splits or L.SPLITS)
    if fold is not None:
        src.check_fold(fold)
        wanted = np.concatenate([src.split_indices(fold, s) for s in splits])
    else:
        wanted = np.flatnonzero(src.status == L.DONE)
    src.require_intact(wanted)  # the table and the clips pulled: a damaged one is never copied
    record = {"source": url, "fold": fold, "splits": splits if fold else None, "modalities": modalities}
    if L.store_exists(dest) and not CacheWriter.needs_template(dest):
        have = (FeatureCache(dest).meta.get("pulled") or {}).get("source")
        if have != url:
            raise UserError(f"{dest} exists and was not pulled from {url}: choose another destination")
    writer = CacheWriter.create_or_open(dest, **src.template())
    if "inputs" in modalities and not writer.meta().get("inputs"):
        writer.add_inputs(src.inputs)
    meta = writer.meta()
    before = meta.get("pulled") or {}
    merged_mods = sorted(set(before.get("modalities") or []) | set(modalities)) if before else modalities
    meta["pulled"] = {**record, "modalities": merged_mods}
    writer.group.attrs[L.ATTRS_KEY] = meta
    g, done = writer.group, writer.status()
    scalars = [n for n in ALWAYS if src._has(n) and L.has_array(g, n)]
    added = [m for m in modalities if not before or m not in (before.get("modalities") or [])]
    todo = [int(i) for i in np.sort(wanted) if done[i] != L.DONE or added]
    new_clip = scalars + [n for m in modalities for n in MODALITY_ARRAYS[m]]  # a clip not here yet
    old_clip = [n for m in added for n in MODALITY_ARRAYS[m]]  # a clip here: only the modalities it lacks
    for i in tqdm(todo, desc="pull", unit="clip", disable=not progress, leave=False):
        for name in new_clip if done[i] != L.DONE else old_clip:
            g[name][i] = src.group[name][i]
        g[L.STATUS][i] = L.DONE
    kept = set(scalars) | {n for m in merged_mods for n in MODALITY_ARRAYS[m]}
    problems = [p for p in FeatureCache(dest).verify()[0] if p.array in kept]
    if problems:
        raise CacheError(f"{dest}: pulled clips do not verify: {problems[0]} (and {len(problems) - 1} more)")
    return {"clips": len(wanted), "pulled": len(todo), "skipped": len(wanted) - len(todo)}
