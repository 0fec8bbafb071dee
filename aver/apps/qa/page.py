"""The page of ``aver qa``: figures (matplotlib, Agg) and one self-contained HTML page.

The HTML comes from the Jinja2 templates in ``templates/`` (one per section, and ``page.html.j2``
around them), rendered with autoescaping on: the Python side hands them plain data (text and
numbers, formatted), never HTML, and every value a template prints is first made one line of
inert text (``aver.utils.for_terminal``: control and bidi characters shown as escapes), then
HTML-escaped by Jinja2. The page has inline CSS, its images as base64 data URIs, no script and no
external URL; the PNGs are also written beside it, with a CSV of the per-clip table.
"""

from __future__ import annotations

import base64
import collections
import csv
import functools
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from aver import layout as L
from aver.utils import for_csv, for_terminal

from .measures import (
    BY_KEY,
    MEASURES,
    MIN_ROBUST,
    ROBUST_Z,
    QAResult,
    measure_cache,
    value_range,
    worst_clips,
)
from .sources import CropSource

MAX_TABLE_ROWS = 5000  # per-clip rows on the page (the CSV holds every clip)


# -- templates -------------------------------------------------------------------------------
def _inert(value: Any) -> Any:
    """What a template prints for ``{{ value }}`` (Jinja2's ``finalize``, applied before
    autoescaping): a rendered macro (``Markup``) as it is, anything else as inert text."""
    from markupsafe import Markup

    return value if isinstance(value, Markup) else for_terminal(value)


@functools.cache
def environment():
    """The Jinja2 environment of the page: this package's templates, autoescaping on (every
    template, whatever its name), ``StrictUndefined`` (a missing value is an error, not "")."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("aver.apps.qa", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_inert,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class Page:
    """The page being built: the HTML lines of its sections (``parts``), each section rendered by
    its template, and the PNGs they embed (written beside the page too)."""

    def __init__(self, files_dir: Path) -> None:
        self.parts: list[str] = []
        self.files_dir = files_dir
        self.images: dict[str, bytes] = {}

    def add(self, section: str, **context: Any) -> None:
        """Render ``templates/<section>.html.j2`` with ``context`` (plain data) and append its lines."""
        html = environment().get_template(f"{section}.html.j2").render(**context)
        self.parts.extend(line for line in html.splitlines() if line.strip())

    def img(self, name: str, png: bytes, alt: str) -> dict[str, str]:
        """Keep PNG ``png`` as ``name``; what the ``img`` macro embeds (base64 data and alt text)."""
        self.images[name] = png
        return {"data": base64.b64encode(png).decode("ascii"), "alt": alt}

    def html(self, dataset: str) -> str:
        """The whole document: ``page.html.j2`` around the sections rendered so far."""
        from markupsafe import Markup

        body = Markup("\n".join(self.parts))  # the sections' own output, escaped when they were rendered
        return environment().get_template("page.html.j2").render(dataset=dataset, body=body) + "\n"


# -- figures ---------------------------------------------------------------------------------
def png_bytes(fig) -> bytes:
    """A matplotlib ``Figure`` rendered by Agg (no global backend change) to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def histograms(result: QAResult) -> bytes | None:
    """Small multiples: one histogram per measure with values, outlier limits dashed red."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    shown = [m for m in MEASURES if value_range(result.values[m.key]) > 0]
    if not shown:
        return None
    cols = 4
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(cols * 3.2, rows * 2.4), dpi=80, layout="constrained")
    for k, m in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        x = result.values[m.key]
        x = x[np.isfinite(x)]
        ax.hist(x, bins=min(30, max(5, len(x) // 3)), color="#4c72b0")
        lo, hi = result.bounds.get(m.key, (-math.inf, math.inf))
        reach = 0.25 * (x.max() - x.min())  # a limit far outside the values is not drawn
        for b in (lo, hi):
            if math.isfinite(b) and x.min() - reach <= b <= x.max() + reach:
                ax.axvline(b, color="#c44e52", ls="--", lw=1)
        ax.set_title(m.label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(labelsize=7)
    return png_bytes(fig)


def tile(face: np.ndarray, flow: np.ndarray | None) -> bytes:
    """One thumbnail PNG: the face crop, and beside it the flow image to the next crop."""
    from matplotlib.image import imsave

    img = (
        face
        if flow is None
        else np.concatenate([face, np.full((face.shape[0], 2, 3), 255, np.uint8), flow], 1)
    )
    buf = io.BytesIO()
    imsave(buf, img, format="png")
    return buf.getvalue()


def clip_tile(result: QAResult, source: CropSource, i: int) -> tuple[bytes | None, str]:
    """Thumbnail of clip ``i`` (its middle crop pair: the crops as stage one cut them, and stage
    one's flow image of the pair), or None and why."""
    if not source.clip_source(i):
        return None, "no crops" + (f" ({', '.join(source.missing)} not installed)" if source.missing else "")
    try:
        n = int(source.cache.lengths["frames"][i])
        a, b, _ = source.pairs(i, n, 1)
    except Exception as e:  # noqa: BLE001 - shown as text in the grid
        return None, f"{type(e).__name__}: {e}"
    if not len(a):
        return None, "fewer than two frames"
    flow = source.flow.image(a[0], b[0]) if source.flow is not None else None
    return tile(a[0], flow), ""


# -- the sections ----------------------------------------------------------------------------
def _num(x: float, fmt: str = "{:.3g}") -> str:
    return fmt.format(x) if math.isfinite(x) else "–"


def _header(page: Page, r: QAResult) -> None:
    m = r.meta
    flow_cfg = (m.get("config") or {}).get("flow") or {}
    flow_model = ((m.get("models") or {}).get("flow") or {}) if isinstance(m.get("models"), dict) else {}
    page.add(
        "header",
        dataset=m.get("dataset"),
        url=r.url,
        preset=m.get("preset"),
        tiny=bool(m.get("tiny")),
        config_hash=m.get("config_hash"),
        layout_version=m.get("layout_version"),
        code_version=m.get("code_version", ""),
        flow_model=flow_model.get("backend") or flow_model.get("model") or "-",
        window=flow_cfg.get("window", 1),
        stride=flow_cfg.get("stride", 1),
    )


def _counts(page: Page, r: QAResult) -> None:
    c = collections.Counter(int(s) for s in r.status)
    damaged = len({p.clip for p in r.damage if not p.table})
    page.add(
        "counts",
        total=len(r.status),
        done=c[L.DONE],
        failed=c[L.FAILED],
        pending=c[L.PENDING],
        damaged=damaged,
    )


def _damage(page: Page, r: QAResult) -> None:
    """Clips whose arrays cannot be read or differ from their digests: not to be trusted."""
    if r.damage:
        page.add("damage", clips=len({p.clip for p in r.damage if not p.table}), problems=r.damage[:500])


def failure_groups(errors: dict[int, str]) -> list[tuple[str, list[int]]]:
    """Failures grouped by cause: the error without its leading file name (``<file>: [<stage>]
    <cause>``), most frequent first."""
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, e in errors.items():
        m = re.match(r"^.*?: (\[[^\]]+\].*)$", e, flags=re.S)
        groups[(m.group(1) if m else e).strip() or "(no cause recorded)"].append(i)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _failures(page: Page, r: QAResult) -> None:
    groups = [
        {
            "n": len(clips),
            "cause": cause,
            "clips": [(r.ids[i], r.errors[i]) for i in clips[:50]],
            "more": max(len(clips) - 50, 0),
        }
        for cause, clips in failure_groups(r.errors)
    ]
    page.add("failures", n=len(r.errors), groups=groups)


def _notes(page: Page, r: QAResult) -> None:
    notes = [(r.ids[i], n) for i, n in list(r.notes.items())[:200]]
    page.add("notes", n=len(r.notes), notes=notes)


def _availability(page: Page, r: QAResult) -> None:
    done = int((r.status == L.DONE).sum())
    flowed = int(np.isfinite(r.values["flow_mean"]).sum())
    why = collections.Counter(r.flow_problems.values())
    reasons = "; ".join(f"{k} ({v} clips)" for k, v in why.most_common(5))
    if r.flow_source.startswith(("unavailable", "none")):
        reasons = r.flow_source
    page.add(
        "measures",
        done=done,
        flowed=flowed,
        jump=BY_KEY["jumps"].help,
        audio_basis=r.audio_basis,
        flow_source=r.flow_source,
        reasons=reasons,
    )


def _rule(page: Page, r: QAResult) -> None:
    rows = []
    for m in MEASURES:
        if not m.bad:
            continue
        lo, hi = r.bounds[m.key]
        fixed = (
            ""
            if m.limit is None
            else {"low": f"< {m.limit:g}", "high": f"> {m.limit:g}", "both": f"|x| > {m.limit:g}"}[m.bad]
        )
        rows.append(
            {"label": m.label, "help": m.help, "bad": m.bad, "fixed": fixed, "lo": _num(lo), "hi": _num(hi)}
        )
    page.add("rule", z=f"{ROBUST_Z:g}", min_robust=MIN_ROBUST, rows=rows)


def _outliers(page: Page, r: QAResult) -> None:
    rows = [(r.ids[i], ", ".join(r.flags[i])) for i in sorted(r.flags)[:500]]
    page.add("outliers", n=len(r.flags), rows=rows)


def _distributions(page: Page, r: QAResult) -> None:
    hist = histograms(r)
    constant = [
        (m.label, _num(float(np.nanmax(r.values[m.key])), m.fmt))
        for m in MEASURES
        if value_range(r.values[m.key]) == 0
    ]
    image = page.img("histograms.png", hist, "histograms of the measures") if hist else None
    page.add("distributions", histograms=image, constant=constant)


def _table(page: Page, r: QAResult) -> None:
    rows = []
    for i in range(min(len(r.ids), MAX_TABLE_ROWS)):
        cells = []
        for m in MEASURES:
            x = r.values[m.key][i]
            lo, hi = r.bounds[m.key]
            cells.append((m.key, math.isfinite(x) and (x < lo or x > hi), _num(x, m.fmt)))
        status = L.STATUS_NAMES.get(int(r.status[i]), "?")
        rows.append(
            {"i": i, "clip": r.ids[i], "status": status, "n_frames": int(r.n_frames[i]), "cells": cells}
        )
    page.add("clips", heads=MEASURES, rows=rows, total=len(r.ids))


def _thumbnails(page: Page, r: QAResult, source: CropSource, sample: int, worst: int) -> None:
    """Face / flow thumbnails of a sample of done clips and of the worst clips by each measure."""
    if not source.has_crops and not source.data:
        page.add("thumbnails", omitted=source.describe())
        return
    if not source.has_crops and not source.raw_ok:
        page.add("thumbnails", omitted=r.flow_source)
        return
    tiles: dict[int, tuple[bytes | None, str]] = {}
    done = np.flatnonzero(r.status == L.DONE)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(done, size=min(sample, len(done)), replace=False)) if len(done) else done
    grids = [
        _grid(page, r, source, tiles, f"Sample ({len(chosen)} of {len(done)} done clips)", chosen.tolist())
    ]
    for m in MEASURES:
        clips = worst_clips(r, m, worst)
        if clips and value_range(r.values[m.key]) > 0:
            grids.append(_grid(page, r, source, tiles, f"Worst by {m.label}", clips, m))
    page.add(
        "thumbnails",
        omitted="",
        no_flow=source.flow is None,
        image_clip=f"{source.flow.image_clip:g}" if source.flow is not None else "",
        crops_from=source.describe(),
        grids=grids,
    )


def _grid(
    page: Page, r: QAResult, source: CropSource, tiles: dict, title: str, clips: list[int], m=None
) -> dict:
    """One grid of thumbnails (made once per clip, kept in ``tiles``) for the thumbnails template."""
    out = []
    for i in clips:
        if i not in tiles:
            tiles[i] = clip_tile(r, source, i)
        png, why = tiles[i]
        out.append(
            {
                "image": page.img(f"thumb_{i}.png", png, str(r.ids[i])) if png else None,
                "why": why,
                "clip": r.ids[i],
                "value": f"{m.label} {_num(r.values[m.key][i], m.fmt)}" if m else "",
                "flagged": i in r.flags,
            }
        )
    return {"title": title, "tiles": out}


def render(r: QAResult, source: CropSource, files_dir: Path, sample: int = 12, worst: int = 4) -> Page:
    """The whole page (its sections in ``Page.parts``) and its images."""
    page = Page(files_dir)
    _header(page, r)
    _counts(page, r)
    _damage(page, r)
    _failures(page, r)
    _notes(page, r)
    _availability(page, r)
    _rule(page, r)
    _outliers(page, r)
    _distributions(page, r)
    _thumbnails(page, r, source, sample, worst)
    _table(page, r)
    return page


# -- files -----------------------------------------------------------------------------------
def write_csv(path: Path, r: QAResult) -> None:
    """The per-clip table as CSV (every clip)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip", "status", "n_frames", *(m.key for m in MEASURES), "flags"])
        for i in range(len(r.ids)):
            vals = [
                "" if not np.isfinite(r.values[m.key][i]) else f"{r.values[m.key][i]:.6g}" for m in MEASURES
            ]
            status = L.STATUS_NAMES.get(int(r.status[i]), "?")
            flags = for_csv("; ".join(r.flags.get(i, [])))
            w.writerow([for_csv(r.ids[i]), status, int(r.n_frames[i]), *vals, flags])


def write_report(url: str, out: str | Path | None = None, **options: Any) -> Path:
    """Measure the cache at ``url`` and write the page to ``out`` (default ``<dataset>-qa.html``),
    its PNGs and the per-clip CSV to ``<out stem>_files/``; ``options`` as ``report``. Returns the
    page's path (``report`` also returns the damaged clips)."""
    return report(url, out, **options).page


def report(
    url: str,
    out: str | Path | None = None,
    data: str | Path | None = None,
    sample: int = 12,
    storage_options: dict | None = None,
    flow_pairs: int = 16,
    worst: int = 4,
    progress: bool = False,
    verify: bool = True,
) -> QAResult:
    """``write_report``, returning the ``QAResult``: ``page`` is the page's path, ``damage`` the
    clips and arrays that cannot be read or differ from their digests (with ``verify``)."""
    if out is not None:
        check_page_path(out)
    result, _cache, source = measure_cache(url, data, storage_options, flow_pairs, progress, verify)
    dataset = str(result.meta.get("dataset") or "cache")
    out = Path(out or f"{re.sub(r'[^A-Za-z0-9._-]+', '_', dataset).strip('.') or 'cache'}-qa.html")
    files_dir = out.with_name(out.stem + "_files")
    page = render(result, source, files_dir, sample, worst)
    files_dir.mkdir(parents=True, exist_ok=True)
    for name, png in page.images.items():
        (files_dir / name).write_bytes(png)
    write_csv(files_dir / "clips.csv", result)
    out.write_text(page.html(dataset), encoding="utf-8")
    result.page = out
    return result


def check_page_path(out: str | Path) -> None:
    """Refuse, before measuring, a page path that is a folder or whose folder cannot be written."""
    from aver.errors import UserError
    from aver.utils import check_out_dir

    if Path(out).is_dir():
        raise UserError(
            f"--out {out}: is a folder; give the HTML page to write, e.g. {Path(out) / 'qa.html'}"
        )
    check_out_dir(Path(out).parent, f"--out {out}: its folder")
