"""``aver report``: our runs beside the paper's numbers, as one Markdown (and HTML) page.

The paper's values live as data in ``paper_results.json`` (table, dataset, variant, head, flow
window/stride for Table 4, metrics in %). Runs are found under a folder: every ``cv_summary.json``
(mean ± sample std over folds and seeds) and every single run's ``metrics.json`` that no summary
covers. A paper row is matched to a run of the same dataset, variant and flow window/stride (read
from the run's cache identity; runs from before aver recorded it used 1/1).
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
    flow: tuple[int, int] = (1, 1)  # the cache's flow window / stride (Table 4)
    protocol: str = ""  # folds and labels of the cache

    @property
    def label(self) -> str:
        return self.variant if self.flow == (1, 1) else f"{self.variant}, flow {self.flow[0]}/{self.flow[1]}"

    def matches(self, row: dict[str, Any]) -> bool:
        """A paper row of this run's dataset, variant and flow setting (flow images by EfficientNet)."""
        return (
            row["dataset"] == self.dataset
            and row["variant"] == self.variant
            and tuple(row.get("flow", (1, 1))) == self.flow
            and row.get("flow_encoder", "efficientnet") == "efficientnet"
        )


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
        out.append(
            Result(folder, info["cache"]["dataset"], _variant(info), "reported", heads, *_setting(info))
        )
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
        out.append(
            Result(
                folder, info["cache"]["dataset"], _variant(info), m["reported_head"], heads, *_setting(info)
            )
        )
    return out


def _variant(info: dict[str, Any]) -> str:
    """``de3`` variants by name; the other systems' as ``<system>:<variant>`` (as in the paper rows)."""
    system = info.get("system", "de3")
    return info["variant"] if system == "de3" else f"{system}:{info['variant']}"


def _setting(info: dict[str, Any]) -> tuple[tuple[int, int], str]:
    """The flow window/stride and the protocol (folds, labels) of a run, from its config.json."""
    cache, data = info.get("cache") or {}, (info.get("train_config") or {}).get("data") or {}
    flow = tuple(cache.get("flow_schedule") or (1, 1))
    labels = cache.get("label_source") or "file name"
    if data.get("labels") == "soft":
        labels += ", trained on the soft labels"
    folds = cache.get("folds_source") or "as recorded in the cache"
    from .protocols import LEAKY

    if any(name in folds for name in LEAKY):
        folds += " (SPEAKER-LEAKY: not comparable with speaker-independent folds)"
    protocol = f"folds {folds}; labels {labels}"
    return (int(flow[0]), int(flow[1])), protocol


def _fmt(value: tuple[float, float | None, int] | None) -> str:
    if value is None:
        return "–"
    mean, std, n = value
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "") + f" (n={n})"


def comparisons(results: list[Result], dataset: str) -> list[tuple[str, float, float | None, float]]:
    """``(label, ours %, std %, paper %)`` for every paper row matched by a run of ``dataset``."""
    out = []
    for r in (r for r in results if r.dataset == dataset):
        for row in (p for p in paper_rows() if r.matches(p)):
            head = row["head"] if row["head"] in r.heads else "reported"
            for metric, value in row["metrics"].items():
                mean, std, _ = r.heads.get(head, {}).get(metric, (float("nan"), None, 0))
                label = f"{r.label} · {head} · {metric} ({row['table']})"
                out.append((label, 100 * mean, None if std is None else 100 * std, float(value)))
    return out


def figure_name(dataset: str) -> str:
    return f"report_{''.join(c if c.isalnum() else '_' for c in dataset)}.png"


def render(runs: Path) -> str:
    """The report as Markdown (a figure per dataset with paper rows: ``figure_name``)."""
    results, rows = collect(runs), paper_rows()
    lines = [
        f"# aver report: {runs}",
        "",
        "Ours: test metrics in %, mean ± sample std over runs (n).",
        "Paper: the system's paper (DE-III: Shi et al.; mocanu2023: Mocanu et al. 2023; avtca: Dhanith "
        "et al.), the table and row named. Same dataset, system, variant, head and flow window/stride "
        "(DE-III Table 4). The papers' protocols differ from ours where a row's source says so.",
        "",
    ]
    if not results:
        lines.append("No runs found (no metrics.json or cv_summary.json under this folder).")
    for dataset in sorted({r.dataset for r in results}):
        protocols = sorted({r.protocol for r in results if r.dataset == dataset})
        lines += [
            f"## {dataset}",
            "",
            *(f"Protocol: {p}." for p in protocols),
            "",
            "| variant | head | metric | ours | paper | source | run |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in (r for r in results if r.dataset == dataset):
            lines += _result_lines(r, [p for p in rows if r.matches(p)])
        lines.append("")
        if comparisons(results, dataset):
            lines += [f"![{dataset}: aver beside the paper]({figure_name(dataset)})", ""]
    return "\n".join(lines) + "\n"


def _result_lines(r: Result, paper: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in paper:
        head = row["head"] if row["head"] in r.heads else "reported"
        for metric, value in row["metrics"].items():
            ours = r.heads.get(head, {}).get(metric)
            out.append(
                f"| {r.label} | {head} | {metric} | {_fmt(ours)} | {value:.1f} | {row['table']} | {r.folder.name} |"
            )
    if not paper:
        for metric in MAIN:
            if metric in r.heads.get("reported", {}):
                out.append(
                    f"| {r.label} | reported ({r.reported_head}) | {metric} | {_fmt(r.heads['reported'][metric])} | – | – | {r.folder.name} |"
                )
    return out


def to_html(markdown: str, folder: Path | None = None) -> str:
    """The Markdown of ``render`` (headings, paragraphs, tables, figures) as one self-contained HTML
    page: figures found in ``folder`` are embedded as data URIs."""
    import base64
    import re

    body, table = [], False
    for line in markdown.splitlines():
        figure = re.fullmatch(r"!\[(.*)\]\(([\w.-]+\.png)\)", line.strip())
        if figure and folder is not None and (folder / figure.group(2)).is_file():
            data = base64.b64encode((folder / figure.group(2)).read_bytes()).decode()
            alt = html.escape(figure.group(1))
            body.append(f"<p><img alt='{alt}' src='data:image/png;base64,{data}' style='max-width:100%'></p>")
            continue
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
    results = collect(runs)
    for dataset in sorted({r.dataset for r in results}):
        rows = comparisons(results, dataset)
        if rows:
            from .plots import plot_comparison

            plot_comparison(rows, md_path.parent / figure_name(dataset), f"{dataset}: aver beside DE-III")
    md_path.write_text(text)
    md_path.with_suffix(".html").write_text(to_html(text, md_path.parent))
    return md_path
