"""The library API of stage two (what ``aver train``, ``aver cv`` and ``aver evaluate`` call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aver.cache import FeatureCache

from .config import TrainConfig, make_config
from .recipe import train_fold as _train_fold
from .report import evaluate_run

__all__ = ["cross_validate", "evaluate_run", "summarise_folds", "train_fold"]


def default_out(cache: str, variant: str) -> str:
    """``runs/<dataset store name>/<variant>``."""
    return str(Path("runs") / Path(cache.rstrip("/")).stem / variant)


def train_fold(
    cache: str | TrainConfig,
    fold: int = 1,
    *,
    preset: str = "paper",
    variant: str = "de3",
    out: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Train one fold of ``cache`` and return its metrics (``metrics.json``).

    ``cache`` is a store path/URL (then ``preset``, ``variant``, ``fields`` such as ``epochs=5`` or
    ``device="cuda"``, and dotted ``overrides`` such as ``{"model.d_model": 64}`` make the config) or
    a ready ``TrainConfig``. The run folder defaults to ``runs/<store>/<variant>/fold<k>``.
    """
    if isinstance(cache, TrainConfig):
        return _train_fold(cache)
    out = out or str(Path(default_out(cache, variant)) / f"fold{fold}")
    cfg = make_config(preset, overrides, cache=cache, fold=fold, variant=variant, out=out, **fields)
    return _train_fold(cfg)


def cross_validate(
    cache: str | TrainConfig,
    folds: list[int] | None = None,
    *,
    preset: str = "paper",
    variant: str = "de3",
    out: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    **fields: Any,
) -> dict[str, dict[str, float]]:
    """Every fold (or ``folds``) into ``<out>/fold<k>``, then mean ± std of the reported test metrics,
    written to ``<out>/cv_summary.json`` and returned."""
    if isinstance(cache, TrainConfig):
        cfg = cache
    else:
        out = out or default_out(cache, variant)
        cfg = make_config(preset, overrides, cache=cache, variant=variant, out=out, **fields)
    store = FeatureCache(cfg.cache, cfg.storage_options)
    folds = folds or list(range(1, store.n_folds + 1))
    for k in folds:
        store.check_fold(k)
    per_fold = {}
    for k in folds:
        fold_cfg = TrainConfig.from_dict({**cfg.to_dict(), "fold": k, "out": str(Path(cfg.out) / f"fold{k}")})
        per_fold[k] = _train_fold(fold_cfg)["test_reported"]
    summary = summarise_folds(per_fold)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "cv_summary.json").write_text(
        json.dumps({"folds": per_fold, "summary": summary}, indent=2)
    )
    return summary


def summarise_folds(per_fold: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Mean and std (population) of every scalar metric across folds."""
    keys = [k for k, v in next(iter(per_fold.values())).items() if isinstance(v, int | float)]
    out = {}
    for k in keys:
        vals = np.array([m[k] for m in per_fold.values()], dtype=float)
        out[k] = {"mean": float(vals.mean()), "std": float(vals.std()), "n": len(vals)}
    return out
