"""A human-readable description of a cache, read through ``FeatureCache`` (no models, no media)."""

from __future__ import annotations

import collections

import numpy as np

from aver import layout as L
from aver.cache import FeatureCache
from aver.utils import for_terminal


def storage_size(url: str, storage_options: dict | None = None) -> tuple[int, int]:
    """Objects (files) and bytes under a store, local or at an fsspec URL (one listing)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **((storage_options or {}) if "://" in url else {}))
    sizes = fs.du(path, total=False, withdirs=False)
    return len(sizes), int(sum(sizes.values()))


def describe(
    url: str,
    storage_options: dict | None = None,
    max_failures: int = 20,
    systems: dict[str, bool] | None = None,
) -> str:
    """``aver info``: what a cache holds. ``systems`` (name -> trains on inputs, from stage two's
    registry, which the kernel does not import) adds which systems the cache can train."""
    cache = FeatureCache(url, storage_options)
    meta, status = cache.meta, cache.status
    counts = collections.Counter(L.STATUS_NAMES.get(int(s), f"code {int(s)}") for s in status)
    n_frames = cache.lengths["frames"]
    done = status == L.DONE
    dims = meta["dims"]
    tiny = "  (TINY random models: not for research)" if meta.get("tiny") else ""
    lines = [
        f"store:    {url}",
        f"dataset:  {meta.get('dataset')}  preset: {meta.get('preset')}{tiny}",
        f"config:   {meta.get('config_hash')}  layout v{meta['layout_version']}  {meta.get('code_version', '')}",
        f"clips:    {len(status)}  " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        f"classes:  {cache.classes or '-'}  targets: {cache.target_names or '-'}",
        f"folds:    {cache.n_folds} ({meta.get('folds_source', '')})",
        f"dims:     image {dims['image']}  audio {dims['audio']} x {dims['audio_layers']} layer(s) "
        f"at {dims['audio_rate_hz']:g} Hz  capacity {meta['capacity']}",
    ]
    lines.extend(_inputs_lines(cache, done, systems or {}))
    objects, size = storage_size(url, storage_options)
    lines.insert(3, f"storage:  {objects} objects, {size / 1e6:.1f} MB")
    if cache.classes:
        soft = "  (+ soft consensus labels: clips/soft_label)" if cache.soft_labels is not None else ""
        lines.insert(5, f"labels:   {cache.label_source}{soft}")
    if done.any():
        lines.append(
            f"frames:   {int(n_frames[done].sum())} in done clips (mean {n_frames[done].mean():.1f} per clip)"
        )
    for key in ("flow", "image", "audio"):
        m = (meta.get("models") or {}).get(key)
        m = m if isinstance(m, dict) else {}
        name = m.get("arch") or m.get("model") or m.get("backend") or "-"
        sha = (m.get("weights_sha256") or "-")[:12]
        lines.append(f"{key:9} {name}  {m.get('weights') or m.get('variant') or ''}  sha256 {sha}")
    notes = cache.notes()
    noted = np.flatnonzero((notes != "") & done)
    if len(noted):
        lines.append(f"notes ({len(noted)} done clips were cut or kept despite lost frames):")
        for i in noted[:max_failures]:
            lines.append(f"  {cache.ids[i]}: {notes[int(i)]}")
    failed = np.flatnonzero(status == L.FAILED)
    if len(failed):
        errors = cache.array(L.ERROR)
        lines.append(f"failures ({len(failed)}):")
        for i in failed[:max_failures]:
            lines.append(f"  {cache.ids[i]}: {errors[int(i)]}")
    # Everything above may hold text from a data folder: no control character reaches the terminal.
    return "\n".join(for_terminal(line) for line in lines)


def _inputs_lines(cache: FeatureCache, done: np.ndarray, systems: dict[str, bool]) -> list[str]:
    """What the cache holds for each kind of model, and so which systems it can train."""
    inputs = cache.inputs
    feats = "features (frames, flow, wav2vec2)"
    on_features = [n for n, on_inputs in systems.items() if not on_inputs] or ["systems on features"]
    on_inputs = [n for n, on_inputs in systems.items() if on_inputs]
    if not inputs:
        more = f" (add crops + waveforms for {', '.join(on_inputs)})" if on_inputs else ""
        return [f"inputs:   {feats} only; trains: {', '.join(on_features)}{more}"]
    ready = int(((cache.input_status() == L.DONE) & done).sum())
    held = []
    if inputs.get("crops"):
        k = inputs.get("crop_frames") or "all"
        held.append(f"face crops ({k} frames at {inputs.get('crop_size')} px)")
    if inputs.get("wave"):
        held.append(f"waveforms ({inputs.get('sample_rate')} Hz)")
    trains = on_features + (on_inputs if inputs.get("crops") and inputs.get("wave") else [])
    return [
        f"inputs:   {feats} + {' + '.join(held)}; {ready} of {int(done.sum())} done clips have them",
        f"trains:   {', '.join(trains)}",
    ]
