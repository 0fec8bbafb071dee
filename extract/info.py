"""A human-readable description of a cache, read with plain zarr (no models, no media)."""

from __future__ import annotations

import collections

import numpy as np

from .store import STATUS_NAMES, open_root


def describe(url: str, storage_options: dict | None = None, max_failures: int = 20) -> str:
    g = open_root(url, "r", storage_options)
    meta = g.attrs["aver"]
    status = g["clips/status"][:]
    counts = collections.Counter(STATUS_NAMES[int(s)] for s in status)
    n_frames = g["clips/n_frames"][:]
    done = status == 1
    lines = [
        f"store:    {url}",
        f"dataset:  {meta['dataset']}  preset: {meta['preset']}{'  (TINY random models: not for research)' if meta.get('tiny') else ''}",
        f"config:   {meta['config_hash']}  layout v{meta['layout_version']}  {meta['code_version']}",
        f"clips:    {len(status)}  " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        f"classes:  {meta['classes'] or '-'}  targets: {meta['targets'] or '-'}",
        f"folds:    {g['folds/split'].shape[0] if 'folds' in g else 0} ({meta['folds_source']})",
        f"dims:     image {meta['dims']['image']}  audio {meta['dims']['audio']} x {meta['dims']['audio_layers']} layer(s) "
        f"at {meta['dims']['audio_rate_hz']:g} Hz  capacity {meta['capacity']}",
    ]
    if done.any():
        lines.append(
            f"frames:   {int(n_frames[done].sum())} in done clips (mean {n_frames[done].mean():.1f} per clip)"
        )
    for key in ("flow", "image", "audio"):
        m = meta["models"][key]
        name = m.get("arch") or m.get("model") or m.get("backend")
        sha = (m.get("weights_sha256") or "-")[:12]
        lines.append(f"{key:9} {name}  {m.get('weights') or m.get('variant') or ''}  sha256 {sha}")
    failed = np.flatnonzero(status == 2)
    if len(failed):
        ids, errors = g["clips/id"][:], g["clips/error"]
        lines.append(f"failures ({len(failed)}):")
        for i in failed[:max_failures]:
            lines.append(f"  {ids[i]}: {str(errors[int(i)])}")
    return "\n".join(lines)
