"""A training run end to end (one fold), re-evaluation of a saved run, and cross-validation."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import FeatureCache
from .checkpoint import (
    CheckpointError,
    cache_identity,
    check_cache,
    load_model_state,
    load_state,
    load_tensors,
    save_model,
    save_state,
    save_tensors,
)
from .config import HEADS, TrainConfig
from .data import FeatureStats, load_clips
from .trainer import Task, _best_head, build_model, predict, score, seed_everything, train_epoch

log = logging.getLogger(__name__)


def _log_to(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("train").addHandler(handler)
    logging.getLogger("train").setLevel(logging.INFO)
    return handler


def _splits(cache: FeatureCache, fold: int) -> dict[str, np.ndarray]:
    idx = {s: cache.split_indices(fold, s) for s in ("train", "validation", "test")}
    empty = [s for s, v in idx.items() if len(v) == 0]
    if empty:
        raise ValueError(f"fold {fold} of {cache.url} has no extracted clips in {empty}")
    return idx


def train_fold(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.variant`` on fold ``cfg.fold`` of ``cfg.cache``; write the run directory.

    Resumes from ``<out>/checkpoint/last.*`` when present (and ``cfg.resume``); a resume with
    another architecture or another cache is refused. Returns the metrics dict.
    """
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _log_to(run_dir)
    try:
        return _train(cfg, run_dir)
    finally:
        logging.getLogger("train").removeHandler(handler)
        handler.close()


def _train(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    seed_everything(cfg.seed)
    torch.use_deterministic_algorithms(cfg.device == "cpu", warn_only=True)
    cache = FeatureCache(cfg.cache, cfg.storage_options)
    task = Task.from_cache(cache)
    idx = _splits(cache, cfg.fold)
    t0 = time.perf_counter()
    clips = {s: load_clips(cache, v, cfg.data) for s, v in idx.items()}
    stats = FeatureStats.from_clips(clips["train"])
    for split in clips.values():
        stats.apply(split)
    save_tensors(run_dir / "checkpoint" / "feature_stats.safetensors", stats.tensors())
    log.info(
        "fold %d of %s: %s clips loaded in %.1f s",
        cfg.fold,
        cache.url,
        {s: len(v) for s, v in clips.items()},
        time.perf_counter() - t0,
    )
    model, model_cfg = build_model(cfg.variant, cache.meta["dims"], len(task.names), cfg.model)
    model.to(cfg.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    info = {
        "train_config": cfg.to_dict(),
        "model_config": model_cfg,
        "variant": cfg.variant,
        "task": task.kind,
        "names": task.names,
        "cache": cache_identity(cache.meta),
    }
    ckpt = run_dir / "checkpoint"
    state = _resume(ckpt, cfg, model, optimizer, info, cache) if cfg.resume else None
    state = state or {"epoch": 0, "history": [], "best": -float("inf"), "bad": 0}
    (run_dir / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    for epoch in range(state["epoch"], cfg.epochs):
        stats = train_epoch(model, clips["train"], cfg, task, optimizer, epoch)
        val = score(task, predict(model, clips["validation"], cfg, task))
        head, value = _best_head(val, task)
        row = {
            "epoch": epoch + 1,
            **stats,
            "val_loss": val["loss"],
            "val_metric": value,
            "val_head": head,
            **{f"val_{h}": val[h][task.select_metric] for h in HEADS if h in val},
        }
        state["history"].append(row)
        log.info(
            "epoch %d: train loss %.4f | val loss %.4f | val %s %.4f (%s head)",
            epoch + 1,
            stats["train_loss"],
            val["loss"],
            task.select_metric,
            value,
            head,
        )
        if value > state["best"]:
            state.update(best=value, bad=0)
            save_model(ckpt, model, {**info, "epoch": epoch + 1, "val_head": head, "val_metric": value})
        else:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        save_state(ckpt, model, optimizer, state)
        if state["bad"] >= cfg.patience:
            log.info("early stop: no validation improvement for %d epochs", cfg.patience)
            break
    (run_dir / "history.json").write_text(json.dumps(state["history"], indent=2))
    return report(run_dir, cfg, cache, task, clips, state["history"])


def _resume(ckpt: Path, cfg: TrainConfig, model, optimizer, info: dict, cache: FeatureCache) -> dict | None:
    if not (ckpt / "trainer_state.json").exists():
        return None
    saved = (
        json.loads((ckpt / "checkpoint.json").read_text()) if (ckpt / "checkpoint.json").exists() else info
    )
    if saved["model_config"] != info["model_config"] or saved["variant"] != info["variant"]:
        raise CheckpointError(
            f"{ckpt} holds a {saved['variant']} model with another architecture; resuming would "
            "change it. Use another --out, or the original settings."
        )
    check_cache(saved["cache"], cache.meta, cache.url, "resume")
    state = load_state(ckpt, model, optimizer)
    log.info("resumed from %s at epoch %d", ckpt, state["epoch"])
    return state


def report(
    run_dir: Path, cfg: TrainConfig, cache: FeatureCache, task: Task, clips: dict, history: list
) -> dict:
    """Load the best checkpoint, score every split and head, write metrics, predictions and plots."""
    state, info = load_model_state(run_dir / "checkpoint")
    model, _ = build_model(info["variant"], cache.meta["dims"], len(task.names), cfg.model)
    model.load_state_dict(state)
    model.to(cfg.device)
    preds = {s: predict(model, c, cfg, task) for s, c in clips.items()}
    metrics = {s: score(task, p) for s, p in preds.items()}
    head = cfg.head if cfg.head != "best" else _best_head(metrics["validation"], task)[0]
    metrics.update(
        reported_head=head,
        select_metric=task.select_metric,
        test=metrics["test"],
        test_reported=metrics["test"][head],
        fold=cfg.fold,
        variant=cfg.variant,
        task=task.kind,
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    _write_predictions(run_dir / "predictions.csv", clips["test"], preds["test"], task, head)
    _plots(run_dir, model, clips["test"], cfg, task, metrics, history, head)
    return metrics


def _write_predictions(path: Path, clips, pred: dict, task: Task, head: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if task.kind == "classification":
            heads = [h for h in HEADS if h in pred]
            w.writerow(
                ["clip_id", "label", "prediction"] + [f"{h}_{name}" for h in heads for name in task.names]
            )
            probs = {h: torch.softmax(torch.from_numpy(pred[h]), 1).numpy() for h in heads}
            for k, c in enumerate(clips):
                w.writerow(
                    [c.clip_id, task.names[int(pred["truth"][k])], task.names[int(pred[head][k].argmax())]]
                    + [f"{p:.5f}" for h in heads for p in probs[h][k]]
                )
        else:
            heads = [h for h in HEADS if h in pred]
            w.writerow(
                ["clip_id"]
                + [f"true_{n}" for n in task.names]
                + [f"pred_{n}" for n in task.names]
                + [f"{h}_{n}" for h in heads for n in task.names]
            )
            for k, c in enumerate(clips):
                w.writerow(
                    [c.clip_id]
                    + [f"{v:.5f}" for v in pred["truth"][k]]
                    + [f"{v:.5f}" for v in pred[head][k]]
                    + [f"{v:.5f}" for h in heads for v in pred[h][k]]
                )


def _plots(run_dir: Path, model, test_clips, cfg: TrainConfig, task: Task, metrics, history, head) -> None:
    from .data import collate, to_device
    from .plots import plot_attention, plot_confusion, plot_learning_curves

    if task.kind == "classification":
        plot_confusion(
            metrics["test"][head]["confusion_matrix"],
            task.names,
            run_dir / "confusion.png",
            title=f"test, {head} head (fold {cfg.fold})",
        )
    if history:
        plot_learning_curves(history, run_dir / "learning_curves.png", metric_name=task.select_metric)
    model.eval()
    with torch.no_grad():
        out = model(to_device(collate([test_clips[0]]), cfg.device))
    if "attn_video" in out and "attn_audio" in out:
        plot_attention(
            out["attn_video"][0].float().cpu().numpy(),
            out["attn_audio"][0].float().cpu().numpy(),
            run_dir / "attention.png",
            title=f"IFE attention, {test_clips[0].clip_id}",
        )


def evaluate_run(run_dir: str, cache_url: str, storage_options: dict | None = None) -> dict:
    """Re-score a finished run on a cache; refuses a cache the run was not trained on."""
    run_dir = Path(run_dir)
    _, info = load_model_state(run_dir / "checkpoint")
    cache = FeatureCache(cache_url, storage_options)
    check_cache(info["cache"], cache.meta, cache_url, "evaluate")
    cfg = TrainConfig.from_dict({**info["train_config"], "cache": cache_url})
    task = Task.from_cache(cache)
    clips = {s: load_clips(cache, v, cfg.data) for s, v in _splits(cache, cfg.fold).items()}
    stats = FeatureStats.from_tensors(load_tensors(run_dir / "checkpoint" / "feature_stats.safetensors"))
    for split in clips.values():
        stats.apply(split)
    history = (
        json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else []
    )
    return report(run_dir, cfg, cache, task, clips, history)


def cross_validate(cfg: TrainConfig, folds: list[int] | None = None) -> dict:
    """Every fold into ``<out>/fold<k>``, then mean ± std of the reported test metrics."""
    cache = FeatureCache(cfg.cache, cfg.storage_options)
    folds = folds or list(range(1, cache.n_folds + 1))
    per_fold = {}
    for k in folds:
        fold_cfg = TrainConfig.from_dict({**cfg.to_dict(), "fold": k, "out": str(Path(cfg.out) / f"fold{k}")})
        per_fold[k] = train_fold(fold_cfg)["test_reported"]
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
