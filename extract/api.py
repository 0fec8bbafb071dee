"""``extract_dataset``: the library function behind ``aver extract`` (and ``aver demo``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aver.errors import require_modules
from aver.layout import store_url
from aver.utils import check_out_dir, require_device

log = logging.getLogger(__name__)

EXTRACT_MODULES = ("av", "cv2", "timm", "transformers", "facenet_pytorch")
TINY_WARNING = (
    "the 'tiny' preset uses small RANDOM models: a cache of the real dataset %r made with it is for "
    "testing the pipeline only, never for research. Use --preset paper (make: PRESET=paper)."
)


def extract_dataset(
    dataset: str,
    *,
    data: str | Path | None = None,
    cache: str = "caches",
    store: str | None = None,
    preset: str = "paper",
    overrides: dict[str, Any] | list[str] | None = None,
    labels: str | Path | None = None,
    folds: str | None = None,
    targets: tuple[str, ...] = (),
    dataset_options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    executor: Any = None,
    progress: bool = True,
    protocol: str | None = None,
):
    """Extract ``dataset`` (a name in ``aver.extract.datasets.DATASETS``) into ``<cache>/<dataset>.zarr``.

    ``preset`` (``PRESETS``) gives the config; ``overrides`` (``{"runtime.device": "cuda"}`` or
    ``["face.margin=0.2"]``) change any field. Idempotent and resumable (see ``run_extraction``).
    Returns the run's ``Summary``; ``summary.store`` is the store's path or URL.
    """
    require_modules("extract", EXTRACT_MODULES, "aver extract")
    from aver.overrides import apply_overrides

    from .datasets import DATASETS, DatasetOptions, load_dataset
    from .pipeline import run_extraction
    from .presets import preset_config

    DATASETS.check(dataset)
    cfg = apply_overrides(preset_config(preset, dataset), overrides or {})
    if cfg.preset == "tiny" and dataset != "synthetic":
        log.warning(TINY_WARNING, dataset)
    if protocol:
        from aver.folds import PROTOCOLS

        PROTOCOLS.check(protocol)
    url = store or store_url(cache, dataset)
    require_device(cfg.runtime.device, "--device (runtime.device)")
    check_out_dir(url, "--store" if store else "--cache")
    opts = DatasetOptions(
        data, labels, folds, tuple(targets), options=dict(dataset_options or {}), protocol=protocol
    )
    index = load_dataset(dataset, opts)
    _announce(index, cfg, url)
    run = {"overwrite": overwrite, "retry_failed": retry_failed, "limit": limit, "executor": executor}
    summary = run_extraction(cfg, index, url, storage_options=storage_options, progress=progress, **run)
    summary.store = url
    return summary


def _announce(index, cfg, url: str) -> None:
    for note in index.notes:
        log.info("%s: %s", index.name, note)
    msg = "extracting %d clips of %s into %s (preset %s, device %s)"
    log.info(msg, len(index.clips), index.name, url, cfg.preset, cfg.runtime.device)
    _quiet_hf_progress()


def _quiet_hf_progress() -> None:
    """transformers draws a bar for every model load; ours (clips, frames/s) is the one to watch."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
