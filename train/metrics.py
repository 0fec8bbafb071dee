"""Evaluation metrics, in numpy, returning JSON-serialisable dicts (python floats, ints and lists).

Classification: accuracy (RAVDESS), F1-macro and F1-micro (CREMA-D), unweighted average recall, per-class
precision / recall / F1 / support and the confusion matrix. Regression: CCC per attribute and its mean
(MSP-IMPROV), plus Pearson, MAE and RMSE. The conventions for undefined cases follow scikit-learn (tested
against it) so that numbers are comparable with published ones; scikit-learn is not needed to run this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like or a (possibly grad-tracking, possibly CUDA) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _class_labels(y: Any, n_classes: int, what: str) -> np.ndarray:
    y = _as_numpy(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D [N], got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{what} must hold integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{what} has class indices outside [0, {n_classes}): min {y.min()}, max {y.max()} "
            "(a label of -1 means the corpus has no classes; use regression_metrics)"
        )
    return y.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Counts, int64 [C, C]: rows are true classes, columns predicted classes."""
    t = _class_labels(y_true, n_classes, "y_true")
    p = _class_labels(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _class_names(n_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    names = [str(i) for i in range(n_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    if len(set(names)) != n_classes:
        raise ValueError(f"class names must be unique, got {names}")
    return names


def classification_metrics(
    y_true: Any, y_pred: Any, n_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Metrics of class predictions against labels, over the fixed label set range(n_classes).

    Conventions (identical to scikit-learn with ``labels=range(n_classes), zero_division=0``):
    precision, recall and F1 of a class are 0 where their denominators are 0; so a class absent from both
    y_true and y_pred has F1 = 0 and still counts in ``f1_macro`` (it lowers it). ``f1_micro`` pools the
    counts over classes (equal to accuracy here, as every prediction is one of the classes).
    ``uar`` (unweighted average recall, scikit-learn's balanced_accuracy_score) averages recall over the
    classes that occur in y_true only: a class with no test samples has no recall to average.

    Args:
        y_true: true class indices, int [N], each in [0, n_classes); N >= 1.
        y_pred: predicted class indices, int [N].
        n_classes: C.
        class_names: C names (keys of the per-class dicts); defaults to "0", "1", ...

    Returns:
        dict with ``n``, ``accuracy``, ``f1_macro``, ``f1_micro``, ``uar``, ``precision_macro``,
        ``recall_macro``, per-class dicts name -> value ``precision``, ``recall``, ``f1``, ``support``
        (int), ``confusion_matrix`` (list of C lists of int; rows true, columns predicted) and
        ``class_names``.
    """
    names = _class_names(n_classes, class_names)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    n = int(cm.sum())
    if n == 0:
        raise ValueError("no samples to evaluate (y_true is empty)")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    # 2TP / (2TP + FP + FN) rather than 2PR / (P + R): the same where defined, and 0 (not NaN) otherwise.
    f1 = _safe_divide(2 * tp, support + predicted)
    present = support > 0

    def per_class(values: np.ndarray, cast=float) -> dict[str, Any]:
        return {name: cast(v) for name, v in zip(names, values, strict=True)}

    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "f1_macro": float(f1.mean()),
        "f1_micro": float(_safe_divide(2 * tp.sum(), support.sum() + predicted.sum())),
        "uar": float(recall[present].mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "precision": per_class(precision),
        "recall": per_class(recall),
        "f1": per_class(f1),
        "support": per_class(support, int),
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }


def _ccc_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CCC of each column (population moments, paper equation 7): [N, K] -> [K], float64.

    Where the denominator is 0 (both columns constant and equal) the agreement is perfect and CCC is 1.
    """
    mx, my = x.mean(axis=0), y.mean(axis=0)
    vx, vy = x.var(axis=0), y.var(axis=0)
    cov = ((x - mx) * (y - my)).mean(axis=0)
    den = vx + vy + (mx - my) ** 2
    return np.where(den > 0, _safe_divide(2 * cov, den), 1.0)


def _pearson_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each column: [N, K] -> [K]; 0 where either column is constant (r is undefined)."""
    dx, dy = x - x.mean(axis=0), y - y.mean(axis=0)
    den = np.sqrt((dx * dx).sum(axis=0) * (dy * dy).sum(axis=0))
    return np.clip(_safe_divide((dx * dy).sum(axis=0), den), -1.0, 1.0)


def regression_metrics(y_true: Any, y_pred: Any, target_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of continuous predictions, per attribute (e.g. arousal, valence, dominance).

    Args:
        y_true: targets, float [N, K] (or [N] for K = 1); N >= 2.
        y_pred: predictions of the same shape.
        target_names: K names (keys of the per-attribute dicts); defaults to "0", "1", ...

    Returns:
        dict with ``n``, per-attribute dicts name -> value ``ccc``, ``pearson``, ``mae``, ``rmse``, their
        means over attributes ``ccc_mean``, ``pearson_mean``, ``mae_mean``, ``rmse_mean``, and
        ``target_names``. CCC uses population moments as in training (:func:`train.losses.ccc`) but in
        float64 without eps.
    """
    t = _as_numpy(y_true).astype(np.float64)
    p = _as_numpy(y_pred).astype(np.float64)
    if t.ndim == 1 and p.ndim == 1:
        t, p = t[:, None], p[:, None]
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must both be [N, K], got {t.shape} and {p.shape}")
    if t.shape[0] < 2:
        raise ValueError(f"regression metrics need at least 2 samples, got {t.shape[0]}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("y_true / y_pred contain NaN or inf; check the targets and the model's outputs")
    k = t.shape[1]
    names = [str(i) for i in range(k)] if target_names is None else [str(c) for c in target_names]
    if len(names) != k or len(set(names)) != k:
        raise ValueError(f"need {k} unique target names, got {names}")
    err = p - t
    values = {
        "ccc": _ccc_np(p, t),
        "pearson": _pearson_np(p, t),
        "mae": np.abs(err).mean(axis=0),
        "rmse": np.sqrt((err * err).mean(axis=0)),
    }
    out: dict[str, Any] = {"n": int(t.shape[0])}
    for key, v in values.items():
        out[key] = {name: float(x) for name, x in zip(names, v, strict=True)}
        out[f"{key}_mean"] = float(v.mean())
    out["target_names"] = names
    return out
