"""What is learned from a cache: classes (classification) or continuous targets (regression).

A task owns everything that differs between the two: the truth it reads from a batch, the loss of a
head, the metrics of a split, the rule that picks the best head on validation, and the columns of
``predictions.csv``. Nothing else in the trainer compares task names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aver.cache import FeatureCache
from aver.errors import CacheError, ConfigError
from aver.registry import Registry
from aver.train.heads import HEADS, output_key
from aver.train.losses import ccc_loss, classification_loss, total_loss
from aver.utils import for_csv

TASKS: Registry[type[Task]] = Registry("task")


class Task:
    """Base class; ``names`` are the class names or the target names, in the cache's order."""

    name = ""
    select_metric = ""  # validation metric that picks the epoch and the reported head

    metrics = ()  # scalar metrics a split reports, any of which can select (``--set metric=...``)

    def __init__(self, names: list[str], metric: str = "auto") -> None:
        self.names = list(names)
        if metric != "auto":
            if metric not in self.metrics:
                raise ConfigError(
                    f"metric {metric!r} is not a {self.name} metric; choose one of {list(self.metrics)}"
                )
            self.select_metric = metric

    @staticmethod
    def from_cache(cache: FeatureCache, metric: str = "auto", labels: str = "hard") -> Task:
        """The cache's task; ``metric`` (default: the task's own) picks epochs and the reported head;
        ``labels="soft"`` trains a classification on the consensus distributions."""
        if cache.classes:
            return Classification(cache.classes, metric, soft=labels == "soft")
        if labels == "soft":
            raise ConfigError(f"data.labels=soft: {cache.url} has continuous targets, not classes")
        if cache.target_names:
            return Regression(cache.target_names, metric)
        raise CacheError(f"{cache.url} has neither classes nor continuous targets to train on")

    # -- training ----------------------------------------------------------------------------
    def truth(self, batch: dict) -> torch.Tensor:
        """What the metrics compare with (class indices, or continuous targets)."""
        raise NotImplementedError

    def loss_truth(self, batch: dict) -> torch.Tensor:
        """What the loss compares with: the truth, unless the task trains on soft labels."""
        return self.truth(batch)

    def head_loss(self, output: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], truth: torch.Tensor) -> torch.Tensor:
        """The objective: the sum of every present head's loss (float32 even under autocast)."""
        logits = {k: v.float() for k, v in outputs.items() if k.startswith("logits_") and v is not None}
        return total_loss(logits, truth, self.head_loss)[0]

    # -- evaluation --------------------------------------------------------------------------
    def head_metrics(self, truth: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, pred: dict[str, Any]) -> dict[str, Any]:
        """Metrics of every head present in ``pred`` (from ``predict``), plus the split's loss."""
        out: dict[str, Any] = {"loss": pred["loss"]}
        for h in HEADS:
            if h in pred:
                out[h] = self.head_metrics(pred["truth"], pred[h])
        return out

    def best_head(self, scores: dict[str, Any], forced: str = "best") -> tuple[str, float]:
        """The head with the highest ``select_metric`` in ``scores`` (from ``score``), or the
        ``forced`` head (``--head video``: epochs and checkpoints are then chosen on that head)."""
        values = {h: scores[h][self.select_metric] for h in HEADS if h in scores}
        if forced != "best":
            if forced not in values:
                raise ConfigError(f"--head {forced}: this model has no {forced} head (it has {list(values)})")
            return forced, values[forced]
        head = max(values, key=values.get)
        return head, values[head]

    # -- predictions.csv ---------------------------------------------------------------------
    def csv_header(self, heads: list[str]) -> list[str]:
        raise NotImplementedError

    def csv_rows(self, clip_ids: list[str], pred: dict[str, Any], head: str) -> list[list[str]]:
        raise NotImplementedError


@TASKS.register("classification")
class Classification(Task):
    """Discrete labels: cross-entropy per head (against the consensus distributions with ``soft``);
    F1-macro selects; probabilities in predictions."""

    name = "classification"
    select_metric = "f1_macro"
    metrics = ("f1_macro", "accuracy", "uar", "f1_micro")

    def __init__(self, names: list[str], metric: str = "auto", soft: bool = False) -> None:
        super().__init__(names, metric)
        self.soft = soft

    def truth(self, batch: dict) -> torch.Tensor:
        return batch["labels"]

    def loss_truth(self, batch: dict) -> torch.Tensor:
        return batch["soft"] if self.soft else batch["labels"]

    def head_loss(self, output: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return classification_loss(output, truth)

    def head_metrics(self, truth: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        from aver.train.metrics import classification_metrics

        return classification_metrics(truth, output.argmax(1), len(self.names), self.names)

    def csv_header(self, heads: list[str]) -> list[str]:
        return ["clip_id", "label", "prediction"] + [for_csv(f"{h}_{n}") for h in heads for n in self.names]

    def csv_rows(self, clip_ids: list[str], pred: dict[str, Any], head: str) -> list[list[str]]:
        heads = [h for h in HEADS if h in pred]
        probs = {h: torch.softmax(torch.from_numpy(pred[h]), 1).numpy() for h in heads}
        return [
            [
                for_csv(cid),
                for_csv(self.names[int(pred["truth"][k])]),
                for_csv(self.names[int(pred[head][k].argmax())]),
            ]
            + [f"{p:.5f}" for h in heads for p in probs[h][k]]
            for k, cid in enumerate(clip_ids)
        ]


@TASKS.register("regression")
class Regression(Task):
    """Continuous targets (arousal, valence, dominance): 1 - CCC per head; mean CCC selects."""

    name = "regression"
    select_metric = "ccc_mean"
    metrics = ("ccc_mean",)

    def truth(self, batch: dict) -> torch.Tensor:
        return batch["targets"]

    def head_loss(self, output: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return ccc_loss(output, truth)

    def head_metrics(self, truth: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        from aver.train.metrics import regression_metrics

        return regression_metrics(truth, output, self.names)

    def csv_header(self, heads: list[str]) -> list[str]:
        n = self.names
        return [
            "clip_id",
            *(for_csv(f"true_{t}") for t in n),
            *(for_csv(f"pred_{t}") for t in n),
            *(for_csv(f"{h}_{t}") for h in heads for t in n),
        ]

    def csv_rows(self, clip_ids: list[str], pred: dict[str, Any], head: str) -> list[list[str]]:
        heads = [h for h in HEADS if h in pred]
        return [
            [for_csv(cid)]
            + [f"{v:.5f}" for v in pred["truth"][k]]
            + [f"{v:.5f}" for v in pred[head][k]]
            + [f"{v:.5f}" for h in heads for v in pred[h][k]]
            for k, cid in enumerate(clip_ids)
        ]


__all__ = ["TASKS", "Classification", "Regression", "Task", "output_key"]
