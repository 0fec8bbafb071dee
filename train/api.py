"""The library API of stage two (what ``aver train``, ``aver cv`` and ``aver evaluate`` call)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from aver.cache import FeatureCache
from aver.utils import for_csv, for_markdown

from .config import TrainConfig, make_config
from .recipe import train_fold as _train_fold
from .report import evaluate_run

__all__ = ["cross_validate", "evaluate_run", "summarise_folds", "train_fold"]

log = logging.getLogger("aver.train")


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

    The default preset is the paper's (its model sizes and epochs), which can take hours on a CPU:
    when the paper preset is to run on the CPU (``device`` defaults to ``"cpu"``), a WARNING says so
    first and names ``preset="tiny"`` for a quick run (``warn_if_slow``).
    """
    if isinstance(cache, TrainConfig):
        cfg = cache
    else:
        cfg = make_config(preset, overrides, cache=cache, fold=fold, variant=variant, out=out or "", **fields)
        if not out:
            cfg.out = str(Path(default_out(cache, cfg.variant, cfg.system, cfg.protocol)) / f"fold{fold}")
    FeatureCache(cfg.cache, cfg.storage_options)  # a missing cache: its one line, before any warning
    warn_if_slow(cfg)
    return _train_fold(cfg)


def warn_if_slow(cfg: TrainConfig) -> None:
    """One WARNING when ``cfg`` trains the paper preset on the CPU. A warning, not INFO: it is most
    likely not what the caller meant, and Python shows WARNING (and not INFO) without any logging
    set up, as in a notebook that calls ``aver.train_fold(cache)`` with the defaults."""
    if cfg.preset == "paper" and cfg.device == "cpu":
        log.warning(
            'the "paper" preset (the paper\'s model sizes and epochs) on the CPU can take hours; '
            'preset="tiny" (--preset tiny) is a small model for a quick run, device="cuda" uses a GPU'
        )


def cross_validate(
    cache: str | TrainConfig,
    folds: list[int] | None = None,
    *,
    seeds: int = 1,
    workers: int = 0,
    scheduler: str | None = None,
    client: Any = None,
    connect_timeout: float = 10.0,
    preset: str = "paper",
    variant: str | None = None,
    out: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    **fields: Any,
) -> dict[str, dict[str, dict[str, float]]]:
    """Every fold (or ``folds``), ``seeds`` times each, then mean ± sample std (ddof = 1) over the
    runs of every test metric, per head and for the reported head.

    Runs go to ``<out>/fold<k>`` (``<out>/fold<k>/seed<s>`` with several seeds, ``s`` the config's
    seed, seed + 1, ...). ``workers`` > 1 trains that many runs at once on a local Dask cluster (one
    worker process per GPU with ``device="cuda"``); ``scheduler`` (an address) or ``client`` runs
    them on a running cluster. Runs already complete with the same settings are read back, not
    trained again; when runs fail the others complete and ``RunsFailed`` names each cause. Writes
    ``cv_summary.json``, ``.csv`` and ``.md`` into ``<out>``; returns ``{"reported" | head: {metric:
    {"mean", "std", "n"}}}``."""
    if isinstance(cache, TrainConfig):
        cfg = cache
    else:
        cfg = make_config(preset, overrides, cache=cache, variant=variant, out=out or "", **fields)
        cfg.out = out or default_out(cache, cfg.variant, cfg.system, cfg.protocol)
    from .recipe import apply_protocol
    from .sweeper import RunsFailed, failures, plan_jobs, run_jobs

    store = apply_protocol(FeatureCache(cfg.cache, cfg.storage_options), cfg.protocol)
    warn_if_slow(cfg)
    folds = folds or list(range(1, store.n_folds + 1))
    for k in folds:
        store.check_fold(k)
    arm = {cfg.variant: cfg}
    jobs = plan_jobs(arm, folds, [cfg.seed + s for s in range(seeds)], Path(cfg.out), arm_folders=False)
    engine = dict(workers=workers, scheduler=scheduler, connect_timeout=connect_timeout, client=client)
    outcomes = run_jobs(jobs, progress=cfg.progress, **engine)
    runs = {
        j.name: outcomes[j.name]["metrics"]["test"] for j in jobs if outcomes[j.name]["status"] != "failed"
    }
    summary = {
        part: summarise_folds({n: r[part] for n, r in runs.items() if part in r}) for part in _parts(runs)
    }
    if runs:
        write_cv_summary(Path(cfg.out), runs, summary)
    failed = failures(outcomes)
    if failed:
        others = f" (the others' summary: {cfg.out}/cv_summary.md)" if runs else ""
        causes = "; ".join(f"{n}: {c}" for n, c in failed.items())
        raise RunsFailed(f"{len(failed)} of {len(jobs)} runs failed{others}: {causes}")
    return summary


def _parts(runs: dict[str, dict]) -> list[str]:
    if not runs:
        return []
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
    """``cv_summary.json`` (every run and the summary) and ``.csv`` (head, metric, mean, std, n: every
    metric), and ``cv_summary.md``: one compact table, ``main_table``, that points to them."""
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
    md = [
        "# Cross-validation summary",
        "",
        f"{len(runs)} run{'' if len(runs) == 1 else 's'}; each cell: mean ± sample standard deviation "
        "(ddof = 1) over the runs, and in brackets the number of runs. The reported head is the head "
        "each run reports (chosen on validation). Every metric of every head: cv_summary.csv and "
        "cv_summary.json.",
        "",
        *main_table(summary),
    ]
    (folder / "cv_summary.md").write_text("\n".join(md) + "\n")


# The columns of cv_summary.md: classification's main metrics, else the mean CCC and each target's.
_MAIN = ("accuracy", "f1_macro", "f1_micro", "uar", "ccc_mean")


def main_table(summary: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown lines: a row per head (``reported`` first), a column per main metric (``_MAIN``
    and ``ccc_<target>``, those the summary has), each cell ``mean ± std (n)`` to 4 decimals
    (``mean (1)`` for one run; ``-`` where a head lacks the metric)."""
    heads = sorted(summary, key=lambda h: h != "reported")  # stable: the others keep their order
    present = list(dict.fromkeys(k for h in heads for k in summary[h]))
    columns = [k for k in _MAIN if k in present]
    columns += [k for k in present if k.startswith("ccc_") and k not in _MAIN]
    columns = columns or present[:4]  # a task with none of them: its first metrics

    def cell(v: dict | None) -> str:
        if v is None:
            return "-"
        spread = "" if v["std"] is None else f" ± {v['std']:.4f}"
        return f"{v['mean']:.4f}{spread} ({v['n']})"

    lines = [
        "| head | " + " | ".join(for_markdown(c) for c in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for h in heads:
        cells = [cell(summary[h].get(c)) for c in columns]
        lines.append(f"| {for_markdown(h)} | " + " | ".join(cells) + " |")
    return lines
