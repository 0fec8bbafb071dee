"""What a sweep writes: ``sweep.json`` (plan, every run's outcome, the statistics), ``sweep.csv``
(one row per statistic), ``sweep.md`` and the forest plot ``sweep_forest.png`` / ``.svg``; and each
arm's ``cv_summary`` (so ``aver report`` lists it like any cross-validation).

Statistics (``aver.train.stats``): per arm × head × metric the mean, sample std, n and a Student t
confidence interval over folds × seeds; per arm against the reference (the full model, under the
same fold protocol) the difference paired on the same fold and seed with its interval, the paired
t-test and Wilcoxon signed-rank p-values, Holm-corrected across the arms of each head × metric, and
a verdict in words. Per clip: McNemar's exact test on the test clips of each (fold, seed) pair.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from aver.utils import for_csv, for_markdown

from .api import flat_metrics, summarise_folds, write_cv_summary
from .sweeper import Job

MAIN = ("accuracy", "f1_macro", "f1_micro", "uar", "ccc_mean")
_NOT_METRICS = ("n", "loss")


def protocol_of(arm: str) -> str:
    return arm.split("@", 1)[1] if "@" in arm else "cache"


def records(jobs: list[Job], outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run × head × scalar test metric of every run that has metrics."""
    out = []
    for job in jobs:
        outcome = outcomes.get(job.name) or {}
        if outcome.get("status") not in ("ok", "complete"):
            continue
        for head, metrics in outcome["metrics"]["test"].items():
            for metric, value in flat_metrics(metrics).items():
                if metric not in _NOT_METRICS:
                    out.append(
                        {"arm": job.arm, "fold": job.fold, "seed": job.seed, "head": head, "metric": metric}
                        | {"value": float(value)}
                    )
    return out


def mcnemar_rows(
    jobs: list[Job], outcomes: dict[str, dict[str, Any]], references: dict[str, str]
) -> list[dict]:
    """McNemar's exact test on the test clips of each (fold, seed), each arm against the reference
    of its protocol, on the reported head's predictions (``predictions.csv`` of both runs)."""
    from .stats import correct_clips, mcnemar

    have = {
        (j.arm, j.fold, j.seed): j.out / "predictions.csv"
        for j in jobs
        if (outcomes.get(j.name) or {}).get("status") in ("ok", "complete")
    }
    out = []
    for (arm, fold, seed), path in have.items():
        ref = references[protocol_of(arm)]
        other = have.get((ref, fold, seed))
        if arm == ref or other is None:
            continue
        try:
            a, b = correct_clips(path), correct_clips(other)
        except (OSError, ValueError):
            continue  # a regression task has no right or wrong per clip
        common = sorted(set(a) & set(b))
        if not common:
            continue
        test = mcnemar([a[c] for c in common], [b[c] for c in common])
        out.append({"arm": arm, "reference": ref, "fold": fold, "seed": seed, **test})
    return out


def write_sweep(
    folder: Path,
    settings: dict[str, Any],
    jobs: list[Job],
    outcomes: dict[str, dict[str, Any]],
    *,
    confidence: float = 0.95,
    alpha: float = 0.05,
    test: str = "t",
    arms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the sweep's files into ``folder`` and return the ``sweep.json`` document."""
    from .stats import compare

    folder.mkdir(parents=True, exist_ok=True)
    _arm_summaries(folder, jobs, outcomes)
    recs = records(jobs, outcomes)
    base = settings["reference"].split("@", 1)[0]
    protocols = settings.get("protocols") or ["cache"]
    references = {p: (base if p == "cache" else f"{base}@{p}") for p in protocols}
    summary, differences = [], []
    for protocol, ref in references.items():
        mine = [r for r in recs if protocol_of(r["arm"]) == protocol]
        if not any(r["arm"] == ref for r in mine):
            continue  # the reference failed everywhere: no comparison, said in the summary
        stats = compare(mine, ref, confidence=confidence, alpha=alpha, test=test)
        summary += stats["summary"]
        differences += stats["differences"]
    doc = {
        "folder": str(folder),
        "settings": settings | {"confidence": confidence, "alpha": alpha, "test": test},
        "runs": {
            j.name: {"arm": j.arm, "fold": j.fold, "seed": j.seed}
            | {k: v for k, v in (outcomes.get(j.name) or {}).items() if k in ("status", "cause", "seconds")}
            for j in jobs
        },
        "failed": {n: o["cause"] for n, o in outcomes.items() if o and o["status"] == "failed"},
        "summary": summary,
        "differences": differences,
        "mcnemar": mcnemar_rows(jobs, outcomes, references),
    }
    (folder / "sweep.json").write_text(json.dumps(doc, indent=2, default=_plain))
    _write_csv(folder / "sweep.csv", doc)
    forest = _forest(folder, doc)
    (folder / "sweep.md").write_text("\n".join(render(doc, forest.name if forest else None)) + "\n")
    return doc


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else str(x)


def _arm_summaries(folder: Path, jobs: list[Job], outcomes: dict[str, dict[str, Any]]) -> None:
    """Each arm's ``cv_summary.json/.csv/.md`` over its runs in this sweep (as ``aver cv`` writes)."""
    by_arm: dict[str, dict[str, dict]] = {}
    for job in jobs:
        outcome = outcomes.get(job.name) or {}
        if outcome.get("status") in ("ok", "complete"):
            name = job.name.split("/", 1)[1]
            by_arm.setdefault(job.arm, {})[name] = outcome["metrics"]["test"]
    for arm, runs in by_arm.items():
        parts = [p for p in next(iter(runs.values())) if all(p in r for r in runs.values())]
        summary = {p: summarise_folds({n: r[p] for n, r in runs.items()}) for p in parts}
        write_cv_summary(folder / arm, runs, summary)


def primary_metric(doc: dict[str, Any]) -> str | None:
    metrics = {r["metric"] for r in doc["summary"] if r["head"] == "reported"}
    return next((m for m in ("f1_macro", "ccc_mean", "accuracy") if m in metrics), None)


def _forest(folder: Path, doc: dict[str, Any]) -> Path | None:
    metric = primary_metric(doc)
    rows = [d for d in doc["differences"] if d["head"] == "reported" and d["metric"] == metric]
    if not rows:
        return None
    from .plots import plot_forest

    ref = doc["settings"]["reference"]
    plot_rows = [
        {
            "label": d["arm"],
            "diff": 100 * d["diff"],
            "ci_low": None if d["ci_low"] is None else 100 * d["ci_low"],
            "ci_high": None if d["ci_high"] is None else 100 * d["ci_high"],
            "verdict": d["verdict"],
        }
        for d in rows
    ]
    title = f"{doc['settings']['system']}: {metric} of each variant minus {ref} (reported head)"
    return plot_forest(
        plot_rows, folder / "sweep_forest.png", title, xlabel=f"difference in {metric}, points of %"
    )


_CSV = (
    "kind", "arm", "head", "metric", "mean", "std", "n", "ci_low", "ci_high",
    "p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm", "verdict", "unpaired",
)  # fmt: skip


def _write_csv(path: Path, doc: dict[str, Any]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(_CSV)
        for kind, rows in (("summary", doc["summary"]), ("difference", doc["differences"])):
            for r in rows:
                r = {**r, "mean": r.get("mean", r.get("diff"))}
                w.writerow([kind] + [_cell(r.get(k)) for k in _CSV[1:]])


def _cell(v: Any) -> str:
    """Numbers as numbers (a negative difference stays readable by every CSV reader); text from the
    cache (variant, head and metric names, verdicts) made inert for spreadsheets."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v) if isinstance(v, int) else for_csv(str(v))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _p(v: float | None) -> str:
    return "–" if v is None else (f"{v:.1e}" if v < 1e-3 else f"{v:.3f}")


def render(doc: dict[str, Any], forest: str | None = None, level: int = 1) -> list[str]:
    """``sweep.md`` (``level`` 2 and no figure: the section ``aver report`` shows)."""
    s = doc["settings"]
    h = "#" * level
    lines = _preamble(doc, h)
    summary = {(r["arm"], r["head"], r["metric"]): r for r in doc["summary"]}
    diffs = {(r["arm"], r["head"], r["metric"]): r for r in doc["differences"]}
    heads = sorted(dict.fromkeys(r["head"] for r in doc["summary"]), key=lambda h: h != "reported")
    primary = primary_metric(doc)
    level_pct = f"{100 * s['confidence']:g} %"
    for head in heads:
        metrics = [m for m in MAIN if any(k[1:] == (head, m) for k in summary)]
        if head != "reported":
            metrics = [m for m in metrics if m == primary]
        if not metrics:
            continue
        title = "reported head (chosen on validation in each run)" if head == "reported" else f"{head} head"
        lines += [
            f"{h}# {for_markdown(title)}",
            "",
            f"| variant | metric | mean ± std (n) | {level_pct} CI | Δ [{level_pct} CI] | p t (Holm) "
            "| p Wilcoxon (Holm) | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for metric in metrics:
            for arm in dict.fromkeys(k[0] for k in summary if k[1:] == (head, metric)):
                cells = _row(
                    summary[(arm, head, metric)], diffs.get((arm, head, metric)), arm, s["reference"]
                )
                lines.append("| " + " | ".join(for_markdown(c) for c in cells) + " |")
        lines.append("")
    lines += _mcnemar_lines(doc["mcnemar"], h)
    if doc["failed"]:
        lines += [f"{h}# Failed runs", "", "| run | cause |", "| --- | --- |"]
        lines += [f"| {for_markdown(n)} | {for_markdown(c)} |" for n, c in doc["failed"].items()]
        lines.append("")
    if forest:
        lines += [f"![differences to {for_markdown(s['reference'])} with their intervals]({forest})", ""]
    return lines


def _preamble(doc: dict[str, Any], h: str) -> list[str]:
    s = doc["settings"]
    runs = doc["runs"].values()
    count = {k: sum(r.get("status") == k for r in runs) for k in ("ok", "complete", "failed")}
    return [
        f"{h} Sweep: {for_markdown(s['system'])} on {for_markdown(s['cache'])}",
        "",
        f"Variants {for_markdown(', '.join(s['variants']))}; folds {s['folds']}; seeds {s['seeds']}; "
        f"fold protocols {for_markdown(', '.join(s['protocols']))}; preset {for_markdown(s['preset'])}. "
        f"{len(doc['runs'])} runs: {count['ok']} trained now, {count['complete']} already complete, "
        f"{count['failed']} failed.",
        *(f"Note: {for_markdown(n)}." for n in s.get("notes", [])),
        "",
        f"Metrics in %: mean ± sample std over folds × seeds (n runs) and its {100 * s['confidence']:g} % "
        f"confidence interval (Student t). Δ: each variant minus {for_markdown(s['reference'])} (the full "
        "model, same fold protocol), paired on the same fold and seed, with its interval; p: paired t-test "
        "and Wilcoxon signed-rank, Holm-corrected across the variants of each head and metric. Verdict: "
        f"the Holm-corrected {'t-test' if s['test'] == 't' else 'Wilcoxon'} p below {s['alpha']:g}.",
        "",
    ]


def _row(r: dict[str, Any], d: dict[str, Any] | None, arm: str, reference: str) -> list[Any]:
    """One variant's cells: its summary and, unless it is the reference, its paired difference."""
    std = "" if r["std"] is None else f" ± {_pct(r['std'])}"
    ci = "–" if r["ci_low"] is None else f"{_pct(r['ci_low'])} – {_pct(r['ci_high'])}"
    if d is None:
        delta = pt = pw = "–"
        verdict = "reference" if arm.split("@")[0] == reference.split("@")[0] else "not paired"
    else:
        bounds = "" if d["ci_low"] is None else f" [{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]"
        delta = f"{100 * d['diff']:+.2f}{bounds}"
        pt = f"{_p(d['p_t'])} ({_p(d['p_t_holm'])})"
        pw = f"{_p(d['p_wilcoxon'])} ({_p(d['p_wilcoxon_holm'])})"
        verdict = d["verdict"] + (f"; {d['unpaired']} runs unpaired" if d.get("unpaired") else "")
    return [arm, r["metric"], f"{_pct(r['mean'])}{std} (n={r['n']})", ci, delta, pt, pw, verdict]


def _mcnemar_lines(rows: list[dict[str, Any]], h: str) -> list[str]:
    if not rows:
        return []
    lines = [
        f"{h}# Per clip: McNemar's exact test on each fold's test clips (reported head)",
        "",
        "| variant | against | runs | p < 0.05 in | b (variant right only) | c (reference right only) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm in dict.fromkeys(m["arm"] for m in rows):
        mine = [m for m in rows if m["arm"] == arm]
        cells = [arm, mine[0]["reference"], len(mine), sum(m["p"] < 0.05 for m in mine)]
        cells += [sum(m["b"] for m in mine), sum(m["c"] for m in mine)]
        lines.append("| " + " | ".join(for_markdown(c) for c in cells) + " |")
    return lines + [""]
