"""Statistics for ``aver sweep``: which differences between ablation variants are real.

A sweep trains every arm (variant) on the same folds and seeds, so an arm and the reference arm (the
full model) are compared *paired* on ``(fold, seed)``: Student's paired t-test
(``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``), both
two-sided, with Holm–Bonferroni step-down correction across the arms compared. Two systems scored
on the same test clips are compared with the exact McNemar test (``scipy.stats.binomtest``).

Every function returns plain Python numbers (``float``/``int``/``None``), ready for JSON.
scipy's warnings (identical samples, ties in the exact Wilcoxon distribution) never leak: each
edge case has a defined, documented result instead.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TESTS = ("t", "wilcoxon")
FAMILIES = ("metric", "all")
LOWER_IS_BETTER = ("loss", "mae", "rmse", "eer")
_FIXED_COLUMNS = ("clip_id", "label", "prediction")


def _finite_array(values: Any, what: str) -> np.ndarray:
    """1-D float array of ``values``; ValueError when empty, not 1-D or holding a non-finite value."""
    if not isinstance(values, np.ndarray | list | tuple):
        values = list(values)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numbers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        k = int(bad[0])
        raise ValueError(f"{what} holds a non-finite value {arr[k]!r} at index {k}")
    return arr


def _check_level(value: float, what: str) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise ValueError(f"{what} must be a number strictly between 0 and 1, got {value!r}")


def _t_interval(mean: float, std: float | None, n: int, confidence: float) -> tuple[float | None, ...]:
    """Student-t interval ``mean ± t_{(1+c)/2, n-1} · s/√n``; ``(None, None)`` when ``n < 2``."""
    if n < 2 or std is None:
        return None, None
    from scipy import stats

    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def describe(values: Iterable[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample std and Student-t confidence interval of the mean.

    Returns ``{"mean", "std", "n", "ci_low", "ci_high"}``: ``std`` with ddof=1 (``None`` when
    ``n == 1``); the interval is ``mean ± t_{(1+c)/2, n-1} · std / √n`` (as
    ``scipy.stats.t.interval``), ``None`` bounds when ``n < 2`` and ``mean`` twice when ``std == 0``.
    Raises ValueError for no values or a non-finite one (naming it), or ``confidence`` outside (0, 1).
    """
    _check_level(confidence, "confidence")
    arr = _finite_array(values, "values")
    n = int(arr.size)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else None
    low, high = _t_interval(mean, std, n, confidence)
    return {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high}


def _finite_or_none(p: Any) -> float | None:
    p = float(p)
    return p if math.isfinite(p) else None


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a`` and ``b`` (aligned: element i of each comes from the same fold and
    seed), on the differences ``d = a - b``.

    Returns ``{"diff", "std", "n", "ci_low", "ci_high", "p_t", "p_wilcoxon"}``: ``diff`` the mean of
    ``d``, ``std`` its sample std (ddof=1; ``None`` when ``n < 2``), the Student-t interval of the mean
    difference, ``p_t`` the two-sided paired t-test (``scipy.stats.ttest_rel(a, b).pvalue``) and
    ``p_wilcoxon`` the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon(a, b).pvalue``,
    default ``zero_method="wilcox"``: zero differences are dropped).

    Edge cases: ``n < 2`` → both p values ``None``; every difference exactly zero → ``diff`` 0 and
    both p values 1.0 (scipy gives NaN or a warning there); differences constant but non-zero
    (``std`` 0) → scipy's t is ±inf and ``p_t`` is its 0.0 (differences equal only up to float
    rounding give scipy's tiny but non-zero p); any other non-finite p from scipy → ``None``.
    scipy's warnings are suppressed. Raises ValueError for unequal lengths, no pairs or a
    non-finite value.
    """
    _check_level(confidence, "confidence")
    x = _finite_array(a, "a")
    y = _finite_array(b, "b")
    if x.size != y.size:
        raise ValueError(f"a and b must be aligned: {x.size} values against {y.size}")
    d = x - y
    n = int(d.size)
    diff = float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else None
    low, high = _t_interval(diff, std, n, confidence)
    p_t = p_w = None
    if n >= 2:
        if not np.any(d):
            diff, p_t, p_w = 0.0, 1.0, 1.0
        else:
            from scipy import stats

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p_t = _finite_or_none(stats.ttest_rel(x, y).pvalue)
                p_w = _finite_or_none(stats.wilcoxon(x, y).pvalue)
    return {"diff": diff, "std": std, "n": n, "ci_low": low, "ci_high": high, "p_t": p_t, "p_wilcoxon": p_w}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values, in the order given.

    With the m non-``None`` p values sorted ascending, ``p_(i)`` (i = 1..m) becomes
    ``max_{j <= i} min(1, (m - j + 1) · p_(j))``: monotone in the raw p, capped at 1. ``None``
    entries stay ``None`` and are not counted in m. Raises ValueError for a value outside [0, 1].
    """
    given = list(pvalues)
    idx = [k for k, p in enumerate(given) if p is not None]
    for k in idx:
        p = given[k]
        if not (isinstance(p, int | float | np.floating) and 0.0 <= float(p) <= 1.0):
            raise ValueError(f"p value {p!r} at index {k} is not a number in [0, 1]")
    m = len(idx)
    out: list[float | None] = [None] * len(given)
    running = 0.0
    for rank, k in enumerate(sorted(idx, key=lambda k: float(given[k]))):
        running = max(running, min(1.0, (m - rank) * float(given[k])))
        out[k] = running
    return out


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test of two systems scored on the same clips.

    ``correct_a[i]`` / ``correct_b[i]``: whether clip i is right for system A / B. ``b`` counts A
    right and B wrong, ``c`` A wrong and B right; ``p = scipy.stats.binomtest(b, b + c, 0.5).pvalue``
    (two-sided), 1.0 when ``b + c == 0``. Returns ``{"b", "c", "n", "p"}`` (``n``: clips).
    Raises ValueError for unequal lengths or no clips.
    """
    x = np.asarray(correct_a, dtype=bool).reshape(-1)
    y = np.asarray(correct_b, dtype=bool).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"correct_a and correct_b must be aligned: {x.size} clips against {y.size}")
    if x.size == 0:
        raise ValueError("mcnemar needs at least one clip")
    b = int(np.count_nonzero(x & ~y))
    c = int(np.count_nonzero(~x & y))
    if b + c == 0:
        p = 1.0
    else:
        from scipy import stats

        p = float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "n": int(x.size), "p": p}


def verdict(
    diff: float | None, p: float | None, n: int, *, alpha: float = 0.05, higher_is_better: bool = True
) -> str:
    """The comparison in plain words, always ending in ``" (n=N)"``.

    ``"lower"`` / ``"higher"`` (the sign of ``diff``) when ``p < alpha``, else ``"no evidence of a
    difference"``; ``"too few runs to test"`` when ``p`` (or ``diff``) is ``None``; ``"different"``
    in the rare case ``p < alpha`` with a mean difference of exactly 0 (a rank test can reject
    then). The words are about the value, whatever ``higher_is_better`` says ("lower" means the
    arm's mean is lower, even for a loss); the flag is accepted so callers pass the metric's
    direction along, and it does not change the words.
    """
    _check_level(alpha, "alpha")
    if p is None or diff is None:
        words = "too few runs to test"
    elif p < alpha:
        words = "higher" if diff > 0 else "lower" if diff < 0 else "different"
    else:
        words = "no evidence of a difference"
    return f"{words} (n={n})"


def _higher_is_better(metric: str) -> bool:
    """False for a metric whose name contains ``loss``, ``mae``, ``rmse`` or ``eer``, else True."""
    name = metric.lower()
    return not any(word in name for word in LOWER_IS_BETTER)


_RECORD_KEYS = ("arm", "fold", "seed", "head", "metric", "value")


def _records(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[Any, float]]]:
    """``{(head, metric): {arm: {(fold, seed): value}}}``, arms in first-seen order (dict order)."""
    table: dict[tuple[str, str], dict[str, dict[Any, float]]] = {}
    arms: dict[str, None] = {}
    for k, r in enumerate(records):
        missing = [key for key in _RECORD_KEYS if key not in r]
        if missing:
            raise ValueError(f"record {k} lacks {missing}: {r!r}")
        arm, head, metric = str(r["arm"]), str(r["head"]), str(r["metric"])
        run = (r["fold"], r["seed"])
        try:
            value = float(r["value"])
        except (TypeError, ValueError):
            raise ValueError(
                f"record {k} ({arm}, fold {run[0]}, seed {run[1]}): value {r['value']!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                f"record {k} ({arm}, {head} {metric}, fold {run[0]}, seed {run[1]}): value is {value}"
            )
        arms.setdefault(arm)
        runs = table.setdefault((head, metric), {}).setdefault(arm, {})
        if run in runs:
            raise ValueError(f"two records for {arm}, {head} {metric}, fold {run[0]}, seed {run[1]}")
        runs[run] = value
    # Re-key each (head, metric) by the global first-seen arm order.
    order = list(arms)
    return {hm: {a: per_arm[a] for a in order if a in per_arm} for hm, per_arm in table.items()}


def compare(
    records: Iterable[dict[str, Any]],
    reference: str,
    *,
    confidence: float = 0.95,
    alpha: float = 0.05,
    test: str = "t",
    family: str = "metric",
) -> dict[str, Any]:
    """Every arm of a sweep against ``reference`` (the full model), per head and metric.

    ``records``: dicts ``{"arm", "fold", "seed", "head", "metric", "value"}``, one per run and score.
    Returns ``{"summary", "differences", "settings"}``:

    - ``summary``: per (head, metric) and arm, ``describe`` of its values (all its runs):
      ``{arm, head, metric, mean, std, n, ci_low, ci_high}``.
    - ``differences``: per (head, metric) and arm other than the reference, ``paired`` against the
      reference on the runs (fold, seed) both have: ``{arm, head, metric, diff, std, n, ci_low,
      ci_high, p_t, p_wilcoxon, p_t_holm, p_wilcoxon_holm, verdict, unpaired}``; ``unpaired`` counts
      the runs of either side left out for lack of a partner. With no pair at all every statistic is
      ``None`` and the verdict reads "too few runs to test (n=0)".
    - ``settings``: ``{confidence, alpha, test, family}``.

    Holm–Bonferroni (``holm``), separately for ``p_t`` and ``p_wilcoxon``, across the arms of one
    (head, metric) (``family="metric"``) or across every row (``family="all"``). ``verdict`` uses the
    Holm-adjusted p of ``test`` ("t" or "wilcoxon"); its words are about the value (``"lower"``:
    the arm's mean is lower), also for lower-is-better metrics (``higher_is_better``).
    Rows are sorted by (head, metric), then arms in first-seen order.

    Raises ValueError for an unknown ``test`` or ``family``, a ``reference`` with no records, a record
    lacking a key or with a non-finite value, or two records for the same arm, head, metric and run.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    _check_level(confidence, "confidence")
    _check_level(alpha, "alpha")
    table = _records(records)
    if not any(reference in per_arm for per_arm in table.values()):
        arms = list(dict.fromkeys(a for per_arm in table.values() for a in per_arm))
        raise ValueError(f"reference arm {reference!r} has no records (arms: {arms})")

    summary, differences = _arm_rows(table, reference, confidence)
    _adjust(differences, family)
    chosen = "p_t_holm" if test == "t" else "p_wilcoxon_holm"
    for row in differences:
        better = _higher_is_better(row["metric"])
        row["verdict"] = verdict(row["diff"], row[chosen], row["n"], alpha=alpha, higher_is_better=better)
        row["unpaired"] = row.pop("unpaired")  # last, after the verdict
    settings = {"confidence": confidence, "alpha": alpha, "test": test, "family": family}
    return {"summary": summary, "differences": differences, "settings": settings}


def _arm_rows(table: dict, reference: str, confidence: float) -> tuple[list[dict], list[dict]]:
    """``compare``'s summary rows and its unadjusted difference rows, in table order."""
    summary: list[dict[str, Any]] = []
    differences: list[dict[str, Any]] = []
    for head, metric in sorted(table):
        per_arm = table[(head, metric)]
        for arm, runs in per_arm.items():
            summary.append(
                {"arm": arm, "head": head, "metric": metric, **describe(list(runs.values()), confidence)}
            )
        ref = per_arm.get(reference, {})
        for arm, runs in per_arm.items():
            if arm == reference:
                continue
            common = [run for run in runs if run in ref]
            if common:
                stats = paired([runs[r] for r in common], [ref[r] for r in common], confidence)
            else:
                stats = dict.fromkeys(("diff", "std", "ci_low", "ci_high", "p_t", "p_wilcoxon"))
                stats["n"] = 0
            row = {"arm": arm, "head": head, "metric": metric}
            row.update({k: stats[k] for k in ("diff", "std", "n", "ci_low", "ci_high", "p_t", "p_wilcoxon")})
            row["unpaired"] = len(runs) + len(ref) - 2 * len(common)
            differences.append(row)
    return summary, differences


def _adjust(differences: list[dict], family: str) -> None:
    """Holm-adjusted ``p_t_holm`` and ``p_wilcoxon_holm`` on every row, within each family."""
    groups: dict[Any, list[int]] = {}
    for k, row in enumerate(differences):
        key = (row["head"], row["metric"]) if family == "metric" else None
        groups.setdefault(key, []).append(k)
    for members in groups.values():
        for key in ("p_t", "p_wilcoxon"):
            adjusted = holm([differences[k][key] for k in members])
            for k, p in zip(members, adjusted, strict=True):
                differences[k][f"{key}_holm"] = p


def correct_clips(predictions_csv: str | Path, head: str | None = None) -> dict[str, bool]:
    """``{clip_id: prediction == label}`` from a classification run's ``predictions.csv``.

    Columns: ``clip_id``, ``label``, ``prediction``, then probabilities ``<head>_<class>`` (class
    names may hold underscores). ``head=None`` uses the ``prediction`` column (the reported head);
    a head name uses the argmax over the columns starting with ``f"{head}_"`` (first column on a
    tie; the class is the rest of the column name). Feed two runs' results to ``mcnemar`` (aligned
    on the clip ids both have). Raises ValueError naming the file when a column is missing (a
    regression run has no ``label``/``prediction``), a probability is not a number, or a clip id
    repeats.
    """
    path = Path(predictions_csv)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected the columns clip_id, label, prediction")
        missing = [c for c in _FIXED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} (not a classification run's predictions.csv?)")
        at = {c: header.index(c) for c in _FIXED_COLUMNS}
        prefix = f"{head}_" if head is not None else None
        prob_cols: list[tuple[int, str]] = []
        if prefix is not None:
            prob_cols = [
                (k, name[len(prefix) :])
                for k, name in enumerate(header)
                if name.startswith(prefix) and name not in _FIXED_COLUMNS
            ]
            if not prob_cols:
                raise ValueError(f"{path}: no probability columns for head {head!r} (columns {header})")
        out: dict[str, bool] = {}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line}: {len(row)} cells for {len(header)} columns")
            clip = row[at["clip_id"]]
            if clip in out:
                raise ValueError(f"{path}, line {line}: clip {clip!r} appears twice")
            if prefix is None:
                predicted = row[at["prediction"]]
            else:
                try:
                    probs = [float(row[k]) for k, _ in prob_cols]
                except ValueError:
                    probs = [math.nan]
                if not all(math.isfinite(v) for v in probs):
                    raise ValueError(f"{path}, line {line}: a {head} probability is not a finite number")
                predicted = prob_cols[int(np.argmax(probs))][1]
            out[clip] = predicted == row[at["label"]]
    return out


__all__ = [
    "compare",
    "correct_clips",
    "describe",
    "holm",
    "mcnemar",
    "paired",
    "verdict",
]
