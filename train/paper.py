"""``aver report``: our runs beside the papers' numbers, as one Markdown (and HTML) page.

The papers' values live as data in ``paper_results.json`` (system, table, dataset, variant, head,
fold protocol, backbone initialisation, flow window/stride for DE-III's Table 4, metrics in % as
strings exactly as the paper prints them); each system returns its own rows (``System.paper_rows``),
so a plugin brings its paper's. Runs are found under a folder: every ``cv_summary.json`` (mean ±
sample std over folds and seeds) and every single run's ``metrics.json`` that no summary covers.

A paper value is set beside ours only under the same dataset, system, variant, fold protocol and
flow window/stride; otherwise it is listed with what differs and the flags that would match it.
A different backbone initialisation is named beside a paired value, never hidden.
"""

from __future__ import annotations

import functools
import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aver.utils import for_html, for_markdown

from .api import flat_metrics

MAIN = ("accuracy", "f1_macro", "f1_micro", "uar", "ccc_mean")


@dataclass
class Result:
    """One model's test metrics: ``{metric: (mean, std or None, n runs)}`` per head."""

    folder: Path
    dataset: str
    system: str
    variant: str
    reported_head: str
    heads: dict[str, dict[str, tuple[float, float | None, int]]]
    flow: tuple[int, int] = (1, 1)  # the cache's flow window / stride (Table 4)
    protocol: str = ""  # folds and labels of the cache, in words
    protocol_key: str = "cache"  # the named fold protocol the run used (aver.folds.PROTOCOLS)
    init: str = "random"  # how its backbones were initialised

    @property
    def label(self) -> str:
        name = f"{self.system}:{self.variant}"
        return name if self.flow == (1, 1) else f"{name}, flow {self.flow[0]}/{self.flow[1]}"

    def candidates(self, row: dict[str, Any]) -> bool:
        """A paper row of this run's dataset and system with a flow setting it can have (flow
        images by EfficientNet): compared, or listed with what differs."""
        return (
            row["system"] == self.system
            and row["dataset"] == self.dataset
            and tuple(row.get("flow", (1, 1))) == self.flow
            and row.get("flow_encoder", "efficientnet") == "efficientnet"
        )

    def differences(self, row: dict[str, Any]) -> list[str]:
        """What keeps a paper row from being this run's counterpart, with the flags that match it."""
        out = []
        if row["variant"] != self.variant:
            out.append(f"variant {row['variant']} (ours {self.variant}): --variant {row['variant']}")
        if row.get("protocol", "cache") != self.protocol_key:
            out.append(f"folds {row['protocol']} (ours {self.protocol_key}): --protocol {row['protocol']}")
        return out

    def matches(self, row: dict[str, Any]) -> bool:
        return self.candidates(row) and not self.differences(row)


@functools.cache
def stored_rows() -> list[dict[str, Any]]:
    """Every row of ``paper_results.json`` (all systems)."""
    return json.loads(resources.files("aver.train").joinpath("paper_results.json").read_text())["rows"]


def paper_rows() -> list[dict[str, Any]]:
    """The rows of every registered system (``System.paper_rows``)."""
    from .systems import SYSTEMS

    return [row for _, system in SYSTEMS.items() for row in system.paper_rows()]


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
        out.append(_result(folder, info, "reported", heads))
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
        out.append(_result(folder, info, m["reported_head"], heads))
    return out


def _result(folder: Path, info: dict[str, Any], head: str, heads: dict) -> Result:
    from .systems import SYSTEMS

    system = info.get("system") or SYSTEMS.default_name()
    flow, protocol = _setting(info)
    return Result(
        folder,
        info["cache"]["dataset"],
        system,
        info["variant"],
        head,
        heads,
        flow,
        protocol,
        protocol_key(info),
        info.get("init", "random"),
    )


def protocol_key(info: dict[str, Any]) -> str:
    """The named fold protocol of a run: the one it trained under, else the one its cache was
    extracted with (``folds_source`` "protocol NAME"), else ``cache`` (the adapter's own folds)."""
    trained = info.get("protocol") or "cache"
    if trained != "cache":
        return trained
    source = (info.get("cache") or {}).get("folds_source") or ""
    return source.split(" ", 1)[1] if source.startswith("protocol ") else "cache"


def _setting(info: dict[str, Any]) -> tuple[tuple[int, int], str]:
    """The flow window/stride and the protocol (folds, labels) of a run, from its config.json."""
    cache, data = info.get("cache") or {}, (info.get("train_config") or {}).get("data") or {}
    flow = tuple(cache.get("flow_schedule") or (1, 1))
    labels = cache.get("label_source") or "file name"
    if data.get("labels") == "soft":
        labels += ", trained on the soft labels"
    folds = cache.get("folds_source") or "as recorded in the cache"
    if info.get("protocol") not in (None, "cache"):
        folds = f"protocol {info['protocol']}"
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
    """``(label, ours %, std %, paper %)`` for every paper row that is a run's counterpart."""
    out = []
    rows = paper_rows()
    for r in (r for r in results if r.dataset == dataset):
        for row in (p for p in rows if r.matches(p)):
            head = row["head"] if row["head"] in r.heads else "reported"
            for metric, value in row["metrics"].items():
                mean, std, _ = r.heads.get(head, {}).get(metric, (float("nan"), None, 0))
                label = f"{r.label} · {head} · {metric} ({row['table']})"
                out.append((label, 100 * mean, None if std is None else 100 * std, float(value)))
    return out


def figure_name(dataset: str) -> str:
    return f"report_{''.join(c if c.isalnum() else '_' for c in dataset)}.png"


def render(runs: Path) -> str:
    """The report as Markdown (a figure per dataset with paired paper rows: ``figure_name``)."""
    from .systems import SYSTEMS

    results, rows = collect(runs), paper_rows()
    papers = sorted({r.system for r in results} & set(SYSTEMS.names()))
    lines = [
        f"# aver report: {for_markdown(runs)}",
        "",
        "Ours: test metrics in %, mean ± sample std over runs (n). Paper: as the paper prints it, "
        "beside ours only under the same dataset, system, variant, fold protocol and flow "
        "window/stride; a different backbone initialisation is named in the notes.",
        *(f"Paper of {for_markdown(name)}: {for_markdown(SYSTEMS.get(name).paper)}." for name in papers),
        "",
    ]
    if not results:
        lines.append("No runs found (no metrics.json or cv_summary.json under this folder).")
    for dataset in sorted({r.dataset for r in results}):
        here = [r for r in results if r.dataset == dataset]
        lines += [
            f"## {for_markdown(dataset)}",
            "",
            *(f"Protocol: {for_markdown(p)}." for p in sorted({r.protocol for r in here})),
            "",
            "| system:variant | head | metric | ours | paper | source | notes | run |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in here:
            lines += _result_lines(r, [p for p in rows if r.matches(p)])
        lines += _unpaired_lines(here, rows)
        lines.append("")
        if comparisons(results, dataset):
            alt = for_markdown(dataset).replace("[", "\\[").replace("]", "\\]")
            lines += [f"![{alt}: aver beside the papers]({figure_name(dataset)})", ""]
    lines += _sweep_lines(runs)
    return "\n".join(lines) + "\n"


def _sweep_lines(runs: Path) -> list[str]:
    """Each sweep under ``runs`` (its ``sweep.json``): intervals, paired differences and verdicts."""
    from .sweep_report import render as render_sweep

    out = []
    for path in sorted(runs.rglob("sweep.json")):
        try:
            doc = json.loads(path.read_text())
            section = render_sweep(doc, None, level=2)
        except (OSError, ValueError, KeyError, TypeError) as e:
            out += [f"Sweep {for_markdown(path)} could not be read ({for_markdown(type(e).__name__)}).", ""]
            continue
        out += [*section, f"Files: {for_markdown(path.parent)} (sweep.md, sweep.csv, sweep_forest.png).", ""]
    return out


def _row(*cells: Any) -> str:
    """One Markdown table row; each cell's text made inert (``for_markdown``: ``|`` escaped)."""
    return "| " + " | ".join(for_markdown(c) for c in cells) + " |"


def _init_note(r: Result, row: dict[str, Any]) -> str:
    paper = row.get("init", "")
    if not paper or paper.startswith("n/a") or paper.split(" ", 1)[0] == r.init.split(" ", 1)[0]:
        return ""
    from .systems import SYSTEMS

    flags = SYSTEMS.get(r.system).init_flags(paper) if r.system in SYSTEMS else ""
    return f"backbones: ours {r.init}, paper {paper}" + (f" ({flags})" if flags else "")


def _result_lines(r: Result, paper: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in paper:
        head = row["head"] if row["head"] in r.heads else "reported"
        for metric, value in row["metrics"].items():
            ours = r.heads.get(head, {}).get(metric)
            out.append(
                _row(
                    r.label, head, metric, _fmt(ours), value, row["table"], _init_note(r, row), r.folder.name
                )
            )
    if not paper:
        for metric in MAIN:
            if metric in r.heads.get("reported", {}):
                # a summary's runs each chose their head on validation; a single run names its own
                reported = "reported" if r.reported_head == "reported" else f"reported ({r.reported_head})"
                out.append(
                    _row(
                        r.label,
                        reported,
                        metric,
                        _fmt(r.heads["reported"][metric]),
                        "–",
                        "–",
                        "",
                        r.folder.name,
                    )
                )
    return out


def _unpaired_lines(results: list[Result], rows: list[dict[str, Any]]) -> list[str]:
    """The paper rows of these runs' systems that no run is the counterpart of: the paper's value,
    what differs from the closest run, and the flags that would match it."""
    out = []
    for row in rows:
        near = [r for r in results if r.candidates(row)]
        if not near or any(r.matches(row) for r in near):
            continue
        r = min(near, key=lambda x: len(x.differences(row)))
        differs = "; ".join(r.differences(row))
        for metric, value in row["metrics"].items():
            name = f"{row['system']}:{row['variant']}"
            out.append(
                _row(
                    name,
                    row["head"],
                    metric,
                    "not paired",
                    value,
                    row["table"],
                    f"differs from {r.label}: {differs}",
                    "–",
                )
            )
    return out


def to_html(markdown: str, folder: Path | None = None) -> str:
    """The Markdown of ``render`` (headings, paragraphs, tables, figures) as one self-contained HTML
    page: figures found in ``folder`` are embedded as data URIs."""
    import base64

    body, table = [], False
    for line in markdown.splitlines():
        figure = re.fullmatch(r"!\[(.*)\]\(([\w.-]+\.png)\)", line.strip())
        if figure and folder is not None and (folder / figure.group(2)).is_file():
            data = base64.b64encode((folder / figure.group(2)).read_bytes()).decode()
            alt = _text(figure.group(1))
            body.append(f"<p><img alt='{alt}' src='data:image/png;base64,{data}' style='max-width:100%'></p>")
            continue
        cells = (
            [_text(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if line.startswith("|")
            else None
        )
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
            body.append(f"<h{level}>{_text(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_text(line)}</p>")
    if table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{border:1px solid #ccc;padding:.2em .6em}table{border-collapse:collapse}"
    return (
        f"<!doctype html><meta charset='utf-8'><title>aver report</title><style>{style}</style>\n"
        + "\n".join(body)
        + "\n"
    )


def _text(markdown: str) -> str:
    """The text of a Markdown fragment written by ``for_markdown``, HTML-escaped for the page."""
    plain = re.sub(r"\\([|\[\]])", r"\1", markdown)
    return for_html(html.unescape(plain))


def write_report(runs: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` (default: into ``runs``); returns the Markdown path."""
    runs = Path(runs)
    md_path = Path(out) if out else runs / "report.md"
    text = render(runs)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    results, paper = collect(runs), paper_rows()
    for dataset in sorted({r.dataset for r in results}):
        rows = comparisons(results, dataset)
        if rows:
            from .plots import plot_comparison

            paired = [r for r in results if r.dataset == dataset and any(r.matches(p) for p in paper)]
            systems = sorted({r.system for r in paired})
            title = f"{dataset}: aver beside the papers of {', '.join(systems)}"
            plot_comparison(rows, md_path.parent / figure_name(dataset), title)
    md_path.write_text(text)
    md_path.with_suffix(".html").write_text(to_html(text, md_path.parent))
    return md_path


@dataclass
class PaperTable:
    """A paper's table as a sweep plan (``aver sweep --table SYSTEM:N``): its variants in the
    table's order, its fold protocol and the datasets it reports."""

    system: str
    number: str
    variants: list[str]
    protocols: list[str]
    datasets: list[str]
    titles: list[str]


def table_number(title: str) -> str | None:
    """``"2"`` for "Table 2 (IFE-Fusion)" or "Mocanu 2023 Table 2 (AT)"; ``None`` without one."""
    m = re.search(r"\bTable (\d+)", title)
    return m.group(1) if m else None


def paper_table(spec: str) -> PaperTable:
    """The table ``SYSTEM:N`` of a system's paper (its ``paper_rows``); a ``ConfigError`` naming
    the tables there are for an unknown one, and for a table whose rows differ in how the cache was
    extracted (DE-III Table 4: one cache per flow setting), which no sweep over one cache can run."""
    from aver.errors import ConfigError
    from aver.registry import unknown_choice

    from .systems import SYSTEMS

    system, sep, number = spec.partition(":")
    if not sep or not number:
        raise ConfigError(f"--table takes SYSTEM:N such as de3:2 or mocanu2023:1, not {spec!r}")
    SYSTEMS.check(system)
    rows = SYSTEMS.get(system).paper_rows()
    tables = sorted({n for r in rows if (n := table_number(r["table"]))}, key=int)
    if number not in tables:
        names = [f"{system}:{n}" for n in tables]
        raise ConfigError("--table: " + unknown_choice(f"table of {system}'s paper", spec, names))
    rows = [r for r in rows if table_number(r["table"]) == number]
    extraction = [r for r in rows if tuple(r.get("flow", (1, 1))) != (1, 1) or r.get("flow_encoder")]
    if extraction:
        raise ConfigError(
            f"--table {spec}: its rows differ in how the cache was extracted ({extraction[0]['table']}, ...): "
            "each row needs its own cache (aver extract --set flow.window=W --set flow.stride=S ...); "
            f"sweep each cache with --model {system} --variants {rows[0]['variant']}"
        )
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    return PaperTable(
        system,
        number,
        variants,
        sorted({r.get("protocol", "cache") for r in rows}),
        sorted({r["dataset"] for r in rows}),
        list(dict.fromkeys(r["table"] for r in rows)),
    )
