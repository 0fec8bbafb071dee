"""``aver report``: our runs beside the paper's numbers, as one Markdown (and HTML) page.

The paper's values live as data in ``paper_results.json`` (table, dataset, variant, head, metrics
in %). Runs are found under a folder: every ``cv_summary.json`` (mean ± sample std over folds and
seeds) and every single run's ``metrics.json`` that no summary covers.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .api import flat_metrics

MAIN = ("accuracy", "f1_macro", "f1_micro", "uar", "ccc_mean")


@dataclass
class Result:
    """One model's test metrics: ``{metric: (mean, std or None, n runs)}`` per head."""

    folder: Path
    dataset: str
    variant: str
    reported_head: str
    heads: dict[str, dict[str, tuple[float, float | None, int]]]


def paper_rows() -> list[dict[str, Any]]:
    return json.loads(resources.files("aver.train").joinpath("paper_results.json").read_text())["rows"]


def _config(folder: Path) -> dict[str, Any] | None:
    found = sorted(folder.rglob("config.json"))
    return json.loads(found[0].read_text()) if found else None


def collect(runs: Path) -> list[Result]:
    """Every cross-validation summary under ``runs``, and every single run outside them."""
    out, covered = [], set()
    for summary_file in sorted(runs.rglob("cv_summary.json")):
        folder, info = summary_file.parent, _config(summary_file.parent)
        if info is None:
            continue
        summary = json.loads(summary_file.read_text())["summary"]
        heads = {h: {k: (v["mean"], v["std"], v["n"]) for k, v in m.items()} for h, m in summary.items()}
        out.append(Result(folder, info["cache"]["dataset"], info["variant"], "reported", heads))
        covered.add(folder)
    for metrics_file in sorted(runs.rglob("metrics.json")):
        folder = metrics_file.parent
        if any(c in folder.parents for c in covered) or "evaluations" in folder.parts:
            continue
        m, info = json.loads(metrics_file.read_text()), json.loads((folder / "config.json").read_text())
        heads = {
            h: {k: (v, None, 1) for k, v in flat_metrics(m["test"][h]).items()}
            for h in m["test"]
            if isinstance(m["test"][h], dict)
        }
        heads["reported"] = {k: (v, None, 1) for k, v in flat_metrics(m["test_reported"]).items()}
        out.append(Result(folder, info["cache"]["dataset"], info["variant"], m["reported_head"], heads))
    return out


def _fmt(value: tuple[float, float | None, int] | None) -> str:
    if value is None:
        return "–"
    mean, std, n = value
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "") + f" (n={n})"


def render(runs: Path) -> str:
    """The report as Markdown."""
    results, rows = collect(runs), paper_rows()
    lines = [
        f"# aver report: {runs}",
        "",
        "Ours: test metrics in %, mean ± sample std over runs (n).",
        "Paper: DE-III (Shi et al.), the table and row named. Same dataset, variant and head.",
        "",
    ]
    if not results:
        lines.append("No runs found (no metrics.json or cv_summary.json under this folder).")
    for dataset in sorted({r.dataset for r in results}):
        lines += [
            f"## {dataset}",
            "",
            "| variant | head | metric | ours | paper | source | run |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in (r for r in results if r.dataset == dataset):
            lines += _result_lines(
                r, [p for p in rows if p["dataset"] == dataset and p["variant"] == r.variant]
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def _result_lines(r: Result, paper: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in paper:
        head = row["head"] if row["head"] in r.heads else "reported"
        for metric, value in row["metrics"].items():
            ours = r.heads.get(head, {}).get(metric)
            out.append(
                f"| {r.variant} | {head} | {metric} | {_fmt(ours)} | {value:.1f} | {row['table']} | {r.folder.name} |"
            )
    if not paper:
        for metric in MAIN:
            if metric in r.heads.get("reported", {}):
                out.append(
                    f"| {r.variant} | reported ({r.reported_head}) | {metric} | {_fmt(r.heads['reported'][metric])} | – | – | {r.folder.name} |"
                )
    return out


def to_html(markdown: str) -> str:
    """The Markdown of ``render`` (headings, paragraphs, tables) as one self-contained HTML page."""
    body, table = [], False
    for line in markdown.splitlines():
        cells = [html.escape(c.strip()) for c in line.strip("|").split("|")] if line.startswith("|") else None
        if cells and set(line.replace("|", "").strip()) <= {"-", " "}:
            continue
        if cells:
            tag = "th" if not table else "td"
            body.append(
                ("<table>" if not table else "")
                + "<tr>"
                + "".join(f"<{tag}>{c}</{tag}>" for c in cells)
                + "</tr>"
            )
            table = True
            continue
        if table:
            body.append("</table>")
            table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{border:1px solid #ccc;padding:.2em .6em}table{border-collapse:collapse}"
    return (
        f"<!doctype html><meta charset='utf-8'><title>aver report</title><style>{style}</style>\n"
        + "\n".join(body)
        + "\n"
    )


def write_report(runs: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` (default: into ``runs``); returns the Markdown path."""
    runs = Path(runs)
    md_path = Path(out) if out else runs / "report.md"
    text = render(runs)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    md_path.with_suffix(".html").write_text(to_html(text))
    return md_path
