"""The library API of stage two (what ``aver train``, ``aver cv`` and ``aver evaluate`` call)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from aver.cache import FeatureCache
from aver.utils import for_csv, for_markdown

from .config import TrainConfig, make_config
from .recipe import train_fold as _train_fold
from .report import evaluate_run

__all__ = ["cross_validate", "evaluate_run", "summarise_folds", "train_fold"]


def default_out(
    cache: str, variant: str, system: str = "", protocol: str = "cache", runs: str = "runs"
) -> str:
    """``<runs>/<store>/<system>/<variant>[@<protocol>]``; a system with ``system_folder`` False
    (DE-III, whose folders predate systems) leaves out the ``<system>`` level."""
    from .systems import SYSTEMS

    spec = SYSTEMS.get(system or SYSTEMS.default_name())
    leaf = variant + ("" if protocol == "cache" else f"@{protocol}")
    root = Path(runs) / Path(cache.rstrip("/")).stem
    return str(root / spec.name / leaf if spec.system_folder else root / leaf)


def train_fold(
    cache: str | TrainConfig,
    fold: int = 1,
    *,
    preset: str = "paper",
    variant: str | None = None,
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
    cfg = make_config(preset, overrides, cache=cache, fold=fold, variant=variant, out=out or "", **fields)
    if not out:
        cfg.out = str(Path(default_out(cache, cfg.variant, cfg.system, cfg.protocol)) / f"fold{fold}")
    return _train_fold(cfg)


def cross_validate(
    cache: str | TrainConfig,
    folds: list[int] | None = None,
    *,
    seeds: int = 1,
    workers: int = 0,
    preset: str = "paper",
    variant: str | None = None,
    out: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    **fields: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """Every fold (or ``folds``), ``seeds`` times each, then mean ± sample std (ddof = 1) over the
    runs of every test metric, per head and for the reported head.

    Runs go to ``<out>/fold<k>`` (``<out>/fold<k>/seed<s>`` with several seeds; seed ``s`` is the
    config's seed + s). ``workers`` > 1 trains that many runs at once in separate processes (one
    per GPU with ``device="cuda"``). Writes ``cv_summary.json``, ``.csv`` and ``.md`` into ``<out>`` and returns
    ``{"reported" | head: {metric: {"mean", "std", "n"}}}``.
    """
    if isinstance(cache, TrainConfig):
        cfg = cache
    else:
        cfg = make_config(preset, overrides, cache=cache, variant=variant, out=out or "", **fields)
        cfg.out = out or default_out(cache, cfg.variant, cfg.system, cfg.protocol)
    from .recipe import apply_protocol

    store = apply_protocol(FeatureCache(cfg.cache, cfg.storage_options), cfg.protocol)
    folds = folds or list(range(1, store.n_folds + 1))
    for k in folds:
        store.check_fold(k)
    jobs = {}
    for k in folds:
        for s in range(seeds):
            name = f"fold{k}" if seeds == 1 else f"fold{k}/seed{s}"
            jobs[name] = {**cfg.to_dict(), "fold": k, "seed": cfg.seed + s, "out": str(Path(cfg.out) / name)}
    results = _run_parallel(jobs, workers) if workers > 1 and len(jobs) > 1 else _run_serial(jobs)
    runs = {name: {"reported": m["test_reported"], **m["test"]} for name, m in results.items()}
    summary = {
        part: summarise_folds({n: r[part] for n, r in runs.items() if part in r}) for part in _parts(runs)
    }
    write_cv_summary(Path(cfg.out), runs, summary)
    return summary


def _run_serial(jobs: dict[str, dict]) -> dict[str, dict]:
    return {name: _train_fold(TrainConfig.from_dict(job)) for name, job in jobs.items()}


def _run_parallel(jobs: dict[str, dict], workers: int) -> dict[str, dict]:
    """The runs in ``workers`` processes at once: on CUDA one per GPU (``cuda:i`` in turn), on the
    CPU with the cores shared out (``torch`` threads = cores // workers). Each run is the run
    ``aver train`` would make (its own folder, log and checkpoint, resumable); a failed run fails
    the cross-validation after the others finish, naming it."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from aver.errors import TrainingError

    device = next(iter(jobs.values()))["device"]
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    if device.startswith("cuda") and gpus == 0:
        raise TrainingError("--workers with --device cuda needs a CUDA device; none is visible")
    threads = max(1, (os.cpu_count() or 1) // workers)
    for i, job in enumerate(jobs.values()):
        job["progress"] = False  # several bars at once would garble the terminal
        if gpus:
            job["device"] = f"cuda:{i % gpus}"
    workers = min(workers, gpus) if gpus else workers
    results, errors = {}, {}
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {name: pool.submit(_train_job, job) for name, job in jobs.items()}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except Exception as e:  # noqa: BLE001 - reported together below
                errors[name] = f"{type(e).__name__}: {e}"
    if errors:
        raise TrainingError(
            "cross-validation runs failed: " + "; ".join(f"{n}: {e}" for n, e in errors.items())
        )
    return results


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_job(job: dict) -> dict:
    return _train_fold(TrainConfig.from_dict(job))


def _parts(runs: dict[str, dict]) -> list[str]:
    first = next(iter(runs.values()))
    return [p for p in first if isinstance(first[p], dict)]


# Not metrics: the test-set size, and class-wise dicts (summarised in their own right elsewhere).
_NOT_METRICS = ("n", "loss")


def summarise_folds(per_run: dict[Any, dict]) -> dict[str, dict[str, float]]:
    """Mean and SAMPLE std (ddof = 1; None for a single run) of every scalar metric over runs."""
    per_run = {name: flat_metrics(m) for name, m in per_run.items()}
    first = next(iter(per_run.values()))
    keys = [k for k, v in first.items() if isinstance(v, int | float) and k not in _NOT_METRICS]
    out = {}
    for k in keys:
        vals = np.array([m[k] for m in per_run.values()], dtype=float)
        std = float(vals.std(ddof=1)) if len(vals) > 1 else None
        out[k] = {"mean": float(vals.mean()), "std": std, "n": len(vals)}
    return out


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars as they are, and one level of named scalars flattened (``ccc.arousal`` -> ``ccc_arousal``,
    ``recall.happy`` -> ``recall_happy``); lists (confusion matrices) are left out."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = v
        elif isinstance(v, dict) and k not in ("support",):
            out.update({f"{k}_{sub}": x for sub, x in v.items() if isinstance(x, int | float)})
    return out


def write_cv_summary(folder: Path, runs: dict, summary: dict) -> None:
    """``cv_summary.json`` (every run and the summary), ``.csv`` (head, metric, mean, std, n), ``.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"std": "sample standard deviation over runs (ddof = 1)", "runs": runs, "summary": summary}
    (folder / "cv_summary.json").write_text(json.dumps(doc, indent=2))
    rows = [
        (part, k, v["mean"], v["std"], v["n"])
        for part, metrics in summary.items()
        for k, v in metrics.items()
    ]
    # metric names hold class and target names from the cache: cells made inert for each format
    with open(folder / "cv_summary.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["head", "metric", "mean", "std", "n"])
        w.writerows(
            [for_csv(p), for_csv(k), f"{m:.6f}", "" if s is None else f"{s:.6f}", n] for p, k, m, s, n in rows
        )
    md = ["| head | metric | mean | std (sample) | runs |", "| --- | --- | --- | --- | --- |"]
    md += [
        f"| {for_markdown(p)} | {for_markdown(k)} | {m:.4f} | {'-' if s is None else f'{s:.4f}'} | {n} |"
        for p, k, m, s, n in rows
    ]
    (folder / "cv_summary.md").write_text("\n".join(md) + "\n")
