"""Score a trained run: metrics for every split and head, ``predictions.csv`` and the plots.

``report`` ends ``train_fold``; ``evaluate_run`` re-scores a finished run on its cache.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from aver.cache import FeatureCache
from aver.utils import for_plot

from .checkpoint import check_cache, load_model_state, load_tensors
from .config import TrainConfig
from .data import FeatureStats, load_clips
from .heads import HEADS
from .protocols import LEAKY
from .recipe import Run, apply_protocol, fold_splits, log_to, make_batch, predict
from .system import InputSpec
from .systems import system_of
from .tasks import Task


def report(run: Run) -> dict[str, Any]:
    """Load the best checkpoint, score every split and head, write metrics, predictions and plots."""
    cfg, task = run.cfg, run.task
    state, info = load_model_state(run.ckpt)
    model = saved_model(info)
    model.load_state_dict(state)
    model.to(cfg.device)
    preds = {s: predict(model, c, cfg, task, run.spec) for s, c in run.clips.items()}
    metrics: dict[str, Any] = {s: task.score(p) for s, p in preds.items()}
    head = task.best_head(metrics["validation"], forced=cfg.head)[0]
    metrics.update(
        reported_head=head,
        head_selection="forced (--head)" if cfg.head != "best" else "best on validation",
        select_metric=task.select_metric,
        test_reported=metrics["test"][head],
        fold=cfg.fold,
        system=cfg.system,
        variant=cfg.variant,
        protocol=cfg.protocol,
        speaker_leaky=cfg.protocol in LEAKY,
        init=run.info.get("init", "random"),
        task=task.name,
    )
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    test_ids = [c.clip_id for c in run.clips["test"]]
    with open(run.dir / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(task.csv_header([h for h in HEADS if h in preds["test"]]))
        writer.writerows(task.csv_rows(test_ids, preds["test"], head))
    _plots(run, model, metrics, head)
    return metrics


def saved_model(info: dict[str, Any]):
    """The architecture a checkpoint records (``model_config``), freshly built by its system's one
    ``build`` (``System.restore``): a run saved by an older aver is rebuilt as it was (each config's
    ``LEGACY`` values), whatever today's defaults are, and without pretrained-weight files (the
    checkpoint holds every weight)."""
    return system_of(info).restore(info)


def saved_spec(info: dict[str, Any]) -> InputSpec | None:
    """What the recorded model samples from the crops (``None``: a ``features`` system)."""
    system = system_of(info)
    return system.input_spec(system.config_from_dict(info["model_config"]))


def _plots(run: Run, model, metrics: dict[str, Any], head: str) -> None:
    """confusion.png (classification), learning_curves.png, attention.png (IFE maps of a test clip)."""
    from .plots import plot_attention, plot_confusion, plot_learning_curves

    cfg, task, test = run.cfg, run.task, run.clips["test"]
    if "confusion_matrix" in metrics["test"][head]:
        title = f"test, {head} head (fold {cfg.fold})"
        names = [for_plot(n) for n in task.names]  # class names from the cache: no mathtext, no escapes
        plot_confusion(
            metrics["test"][head]["confusion_matrix"], names, run.dir / "confusion.png", title=title
        )
    if run.state["history"]:
        plot_learning_curves(
            run.state["history"], run.dir / "learning_curves.png", metric_name=task.select_metric
        )
    model.eval()
    with torch.no_grad():
        out = model(make_batch(run.spec, [test[0]], cfg.device))
    if "attn_video" in out and "attn_audio" in out:
        plot_attention(
            out["attn_video"][0].float().cpu().numpy(),
            out["attn_audio"][0].float().cpu().numpy(),
            run.dir / "attention.png",
            title=for_plot(f"IFE attention, {test[0].clip_id}"),
        )


def evaluation_dir(run_dir: Path, cache_url: str) -> Path:
    """The folder (created) for evaluating ``run_dir`` on ``cache_url``: ``<run>/evaluations/<store
    name>``, unless that folder holds the evaluation of another cache of the same name (two
    ``folder.zarr`` of different corpora); then ``<store name>-<8 hex of the cache's resolved URL>``,
    so neither overwrites the other. Each folder records the cache it evaluated in ``cache.json``;
    re-evaluating the same cache reuses its folder (idempotent)."""
    import hashlib

    url = cache_url.rstrip("/")
    resolved = url if "://" in url else str(Path(url).expanduser().resolve())
    name = Path(url).name or "cache"
    out = run_dir / "evaluations" / name
    if out.exists() and _evaluated(out) != resolved:
        out = out.with_name(f"{name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache.json").write_text(json.dumps({"cache": resolved}))
    return out


def _evaluated(folder: Path) -> str | None:
    """The resolved URL of the cache that ``folder`` evaluated (``None``: not recorded)."""
    try:
        return json.loads((folder / "cache.json").read_text())["cache"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def evaluate_run(run_dir: str | Path, cache_url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Re-score a finished run on its cache, into ``<run>/evaluations/<store>/`` (the run's own
    metrics, predictions and plots are never overwritten). A cache of the same dataset with another
    identity (provenance, clip list or folds) is refused; a cache of another dataset made with the
    same extractors is a cross-corpus evaluation (``crosscorpus``)."""
    run_dir = Path(run_dir)
    _, info = load_model_state(run_dir / "checkpoint")
    cfg = TrainConfig.from_dict({**info["train_config"], "cache": cache_url})
    cache = apply_protocol(FeatureCache(cache_url, storage_options), cfg.protocol)
    if cache.meta.get("dataset") != (info.get("cache") or {}).get("dataset"):  # another corpus
        from .crosscorpus import evaluate_cross_corpus

        out = evaluation_dir(run_dir, cache_url)
        with log_to(out / "evaluate.log"):
            return {**evaluate_cross_corpus(run_dir, cache, info, out), "evaluation_dir": str(out)}
    check_cache(info["cache"], cache, "evaluate")
    task = Task.from_cache(cache, cfg.metric, cfg.data.labels)
    model = saved_model(info)
    out = evaluation_dir(run_dir, cache_url)
    run = Run(
        cfg, out, cache, task, fold_splits(cache, cfg.fold), model, info, ckpt_dir=run_dir / "checkpoint"
    )
    run.system, run.spec = system_of(info), saved_spec(info)
    with log_to(out / "evaluate.log"):
        if run.spec is not None:
            from .e2e import load_input_clips

            n = run.spec.n_frames
            run.clips = {s: load_input_clips(cache, v, n, cfg.data.labels) for s, v in run.splits.items()}
        else:
            run.clips = {s: load_clips(cache, v, cfg.data) for s, v in run.splits.items()}
            stats = FeatureStats.from_tensors(load_tensors(run.ckpt / "feature_stats.safetensors"))
            for split in run.clips.values():
                stats.apply(split)
        history = run_dir / "history.json"
        run.state["history"] = json.loads(history.read_text()) if history.exists() else []
        return {**report(run), "evaluation_dir": str(out)}
