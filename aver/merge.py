"""``aver cache merge`` and ``aver cache diff``: stores of one dataset extracted in parts.

Two teammates who extracted different clips of the same dataset with the same configuration (the
same ``config_hash``, clip table and folds) hold stores with the same template and different clips
committed. ``merge`` writes a new working store through ``CacheWriter`` (the writer extraction
uses) with every clip committed in any source; a clip committed in several sources must be
identical in all of them (by its digests, else by its arrays). The result equals a store extracted
in one run, bit for bit, apart from the run log. ``diff`` reports configuration, clip-status and
content differences between two stores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from aver import layout as L
from aver.cache import FeatureCache
from aver.errors import CacheMismatchError, UserError
from aver.identity import refuse_overlap
from aver.store import CacheWriter, diff_dicts

log = logging.getLogger(__name__)

PER_CLIP = (*L.CLIP_DATA, *L.CLIP_SCALARS, L.ERROR, L.NOTE, L.DIGEST)
INPUTS = tuple(n for n in L.INPUT_ARRAYS if n != L.INPUT_STATUS)  # copied before inputs/status


def differences(a: FeatureCache, b: FeatureCache) -> list[str]:
    """Why ``a`` and ``b`` are not parts of one extraction ([] when they are)."""
    out = []
    if a.meta.get("config_hash") != b.meta.get("config_hash"):
        out.append(
            f"config_hash {a.meta.get('config_hash')} vs {b.meta.get('config_hash')} "
            f"({diff_dicts(a.meta.get('config', {}), b.meta.get('config', {}))})"
        )
    for key in (
        "dataset",
        "dims",
        "capacity",
        "classes",
        "targets",
        "folds_source",
        "label_source",
        "inputs",
    ):
        if a.meta.get(key) != b.meta.get(key):
            out.append(f"{key}: {a.meta.get(key)!r} vs {b.meta.get(key)!r}")
    if list(a.ids) != list(b.ids):
        out.append(f"clip tables differ ({len(a.ids)} vs {len(b.ids)} clips, or another order)")
    elif not (np.array_equal(a.labels, b.labels) and np.array_equal(a.folds, b.folds)):
        out.append("labels or folds differ")
    return out


def _same_clip(a: FeatureCache, b: FeatureCache, i: int) -> bool:
    da, db = a.digests(), b.digests()
    if da is not None and db is not None and da[i] and db[i]:
        return str(da[i]) == str(db[i])
    names = [n for n in PER_CLIP if a._has(n) and b._has(n) and n not in (L.ERROR, L.NOTE, L.DIGEST)]
    return all(np.array_equal(a.group[n][i], b.group[n][i]) for n in names)


def merge(
    sources: list[str],
    dest: str,
    *,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``dest`` with every clip committed in any of ``sources``; returns counts per source.
    A ``dest`` that is one of the sources (by any spelling), lies inside one or holds one is
    refused before anything is opened (``aver.identity.SameStoreError``)."""
    from tqdm import tqdm

    if len(sources) < 2:
        raise UserError("aver cache merge needs at least two stores")
    refuse_overlap("merge", sources, dest, storage_options, storage_options)
    caches = [FeatureCache(s, storage_options) for s in sources]
    for cache in caches:  # a damaged table or clip would be copied under fresh digests
        cache.require_intact()
    base = caches[0]
    for other in caches[1:]:
        why = differences(base, other)
        if why:
            raise CacheMismatchError(
                f"{base.url} and {other.url} are not parts of one extraction: {'; '.join(why)}"
            )
    if L.store_exists(dest, storage_options) and not overwrite:
        raise UserError(f"{dest} exists: choose another destination or pass --overwrite")
    chosen = _choose(caches)
    writer = CacheWriter.create_or_open(
        dest, **base.template(), overwrite=True, storage_options=storage_options
    )
    if base.inputs:
        writer.add_inputs(base.inputs)
    g = writer.group
    for i, src in tqdm(sorted(chosen.items()), desc="merge", unit="clip", disable=not progress, leave=False):
        for name in PER_CLIP + (INPUTS if base.inputs else ()):
            if src._has(name) and L.has_array(g, name):
                g[name][i] = src.group[name][i]
        if base.inputs:
            g[L.INPUT_STATUS][i] = src.input_status()[i]
        g[L.STATUS][i] = src.status[i]  # the commit marker, last
    counts = {c.url: sum(1 for s in chosen.values() if s is c) for c in caches}
    writer.log_run({"event": "merge", "sources": sources, "clips": counts})
    return {"clips": len(chosen), "from": counts}


def _choose(caches: list[FeatureCache]) -> dict[int, FeatureCache]:
    """For each clip, the source to take it from: the first that committed it (checking that every
    other commit is identical), else the first that recorded it as failed."""
    chosen: dict[int, FeatureCache] = {}
    for i in range(len(caches[0].ids)):
        done = [c for c in caches if c.status[i] == L.DONE]
        for other in done[1:]:
            if not _same_clip(done[0], other, i):
                raise CacheMismatchError(
                    f"clip {caches[0].ids[i]} is committed in {done[0].url} and {other.url} with different "
                    "content: the stores were not made by one configuration on the same inputs"
                )
        failed = [c for c in caches if c.status[i] == L.FAILED]
        if done or failed:
            chosen[i] = (done or failed)[0]
    return chosen


def diff(a_url: str, b_url: str, storage_options: dict | None = None) -> list[str]:
    """Lines describing how store ``b`` differs from store ``a`` (empty: the same clips, same content)."""
    a, b = FeatureCache(a_url, storage_options), FeatureCache(b_url, storage_options)
    lines = differences(a, b)
    if list(a.ids) != list(b.ids):
        return lines
    names = {v: k for k, v in L.STATUS_NAMES.items()}
    for sa, sb in ((x, y) for x in names for y in names if x != y):
        n = int(((a.status == names[sa]) & (b.status == names[sb])).sum())
        if n:
            example = a.ids[np.flatnonzero((a.status == names[sa]) & (b.status == names[sb]))[0]]
            lines.append(f"{n} clips {sa} in A, {sb} in B (e.g. {example})")
    both = np.flatnonzero((a.status == L.DONE) & (b.status == L.DONE))
    changed = [str(a.ids[i]) for i in both if not _same_clip(a, b, int(i))]
    if changed:
        lines.append(
            f"{len(changed)} of {len(both)} clips done in both differ in content (e.g. {changed[:3]})"
        )
    return lines
