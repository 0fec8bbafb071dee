"""``aver qa``: a quality report a person reads before trusting a cache.

One self-contained HTML page (inline CSS, images as base64 data URIs, no script, no external URL;
the PNGs are also written beside it, with a CSV of the per-clip table): the clip counts, every
failure grouped by cause, per-clip measures (face detection rate, interpolated frames, track
jumps, optical-flow magnitude, audio vs video duration), dataset histograms, outliers by a stated
robust rule, and face / flow thumbnails for a sample of clips and the worst clips by each measure.

- ``measures``: the per-clip measures, the outlier rule and the pass over the cache (numpy only);
- ``sources``: the face crops and the optical flow, from stage one's own code (its rotation-aware
  decoding, ``crop_faces``, DIS backend and flow image), so a thumbnail is the crop the models
  saw; imported lazily, so the base install (no OpenCV, PyAV or torchvision) still gets its page,
  which says what is missing;
- ``page``: the figures and the HTML, rendered by Jinja2 templates (``templates/``) with
  autoescaping on.

It joins the kernel (``aver.cache``) and stage one (``aver.extract``), so it lives in
``aver.apps``; ``aver.qa`` re-exports it.
"""

from __future__ import annotations

from .measures import (
    BY_KEY,
    JUMP_CENTRE,
    JUMP_SIZE,
    MEASURES,
    MIN_ROBUST,
    ROBUST_Z,
    Measure,
    QAResult,
    audio_seconds,
    flag_outliers,
    flow_source_text,
    measure_cache,
    robust_bounds,
    track_measures,
    value_range,
    worst_clips,
)
from .page import (
    MAX_TABLE_ROWS,
    Page,
    check_page_path,
    clip_tile,
    failure_groups,
    histograms,
    png_bytes,
    render,
    report,
    tile,
    write_csv,
    write_report,
)
from .sources import CropSource, Flow, raw_crops, read_column, spread

__all__ = [
    "BY_KEY",
    "JUMP_CENTRE",
    "JUMP_SIZE",
    "MAX_TABLE_ROWS",
    "MEASURES",
    "MIN_ROBUST",
    "ROBUST_Z",
    "CropSource",
    "Flow",
    "Measure",
    "Page",
    "QAResult",
    "audio_seconds",
    "check_page_path",
    "clip_tile",
    "failure_groups",
    "flag_outliers",
    "flow_source_text",
    "histograms",
    "measure_cache",
    "png_bytes",
    "raw_crops",
    "read_column",
    "render",
    "report",
    "robust_bounds",
    "spread",
    "tile",
    "track_measures",
    "value_range",
    "worst_clips",
    "write_csv",
    "write_report",
]
