"""Train and evaluate one fold, top to bottom: config, data, model, optimiser, evaluate, loop.

A run directory holds ``config.json`` (resolved), ``train.log``, ``history.json``,
``metrics.json`` (per split and per head), ``predictions.csv`` (test clips), ``checkpoint/``
(``model.safetensors`` + ``checkpoint.json``; the resumable ``last.safetensors`` +
``trainer_state.json``) and the plots ``confusion.png``, ``learning_curves.png``,
``attention.png``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .cache import FeatureCache
from .config import HEADS, TrainConfig
from .data import ClipTensors, batches, collate, to_device

log = logging.getLogger(__name__)


def build_model(variant: str, dims: dict[str, Any], n_outputs: int, overrides: dict[str, Any]):
    """The model of ``variant`` for a cache's feature sizes; returns (model, model config dict)."""
    import dataclasses

    from .models.de3 import DE3, DE3Config
    from .models.variants import VARIANTS

    base = DE3Config(
        d_frames=int(dims["image"]),
        d_flow=int(dims["image"]),
        d_audio=int(dims["audio"]),
        n_outputs=n_outputs,
        **overrides,
    )
    cfg = VARIANTS.get(variant)(base)
    return DE3(cfg), dataclasses.asdict(cfg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Task:
    """Classification (``classes``) or regression (``targets``), read from the cache."""

    kind: str
    names: list[str]

    @classmethod
    def from_cache(cls, cache: FeatureCache) -> Task:
        if cache.classes:
            return cls("classification", cache.classes)
        if cache.target_names:
            return cls("regression", cache.target_names)
        raise ValueError(f"{cache.url} has neither classes nor continuous targets to train on")

    @property
    def select_metric(self) -> str:
        return "f1_macro" if self.kind == "classification" else "ccc_mean"

    def truth(self, batch: dict) -> torch.Tensor:
        return batch["labels"] if self.kind == "classification" else batch["targets"]


def _autocast(cfg: TrainConfig):
    if cfg.amp and cfg.device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_epoch(model, clips, cfg: TrainConfig, task: Task, optimizer, epoch: int) -> dict[str, float]:
    """One pass over the training clips; returns mean loss and where the time went."""
    from .losses import total_loss

    model.train()
    total, n, t_data, t_model = 0.0, 0, 0.0, 0.0
    for idx in batches(clips, cfg.data, shuffle=True, seed=cfg.seed * 1000 + epoch):
        t0 = time.perf_counter()
        batch = to_device(collate([clips[i] for i in idx]), cfg.device)
        t1 = time.perf_counter()
        with _autocast(cfg):
            out = model(batch)
        loss, _ = total_loss(
            {k: v.float() for k, v in out.items() if k.startswith("logits_")}, task.truth(batch), task.kind
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        total += float(loss.detach()) * len(idx)
        n += len(idx)
        t_data, t_model = t_data + (t1 - t0), t_model + (t2 - t1)
    return {"train_loss": total / max(n, 1), "data_s": t_data, "model_s": t_model, "clips": n}


@torch.no_grad()
def predict(model, clips: list[ClipTensors], cfg: TrainConfig, task: Task) -> dict[str, Any]:
    """Outputs of every head for ``clips`` (in their order) and the total loss over the split.

    The loss is computed once over the whole split: CCC is a corpus-level statistic.
    """
    from .losses import total_loss

    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    order, truth = [], []
    for idx in batches(clips, cfg.data, shuffle=False, seed=0):
        batch = to_device(collate([clips[i] for i in idx]), cfg.device)
        with _autocast(cfg):
            out = model(batch)
        for key, value in out.items():
            if key.startswith("logits_") and value is not None:
                outs.setdefault(key, []).append(value.float().cpu())
        order.extend(idx)
        truth.append(task.truth(batch).cpu())
    inverse = torch.as_tensor(order).argsort()
    logits = {k: torch.cat(v)[inverse] for k, v in outs.items()}
    y = torch.cat(truth)[inverse]
    loss = float(total_loss(logits, y, task.kind)[0]) if len(clips) > 1 else float("nan")
    result: dict[str, Any] = {k.removeprefix("logits_"): v.numpy() for k, v in logits.items()}
    result.update(truth=y.numpy(), loss=loss)
    return result


def score(task: Task, pred: dict[str, Any]) -> dict[str, Any]:
    """Metrics per head for one split."""
    from .metrics import classification_metrics, regression_metrics

    out: dict[str, Any] = {"loss": pred["loss"]}
    for h in HEADS:
        if h not in pred:
            continue
        if task.kind == "classification":
            out[h] = classification_metrics(pred["truth"], pred[h].argmax(1), len(task.names), task.names)
        else:
            out[h] = regression_metrics(pred["truth"], pred[h], task.names)
    return out


def _best_head(val: dict[str, Any], task: Task) -> tuple[str, float]:
    scores = {h: val[h][task.select_metric] for h in HEADS if h in val}
    head = max(scores, key=scores.get)
    return head, scores[head]
