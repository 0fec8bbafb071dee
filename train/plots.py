"""Figures for run reports: confusion matrix, learning curves, inter-modal attention (paper Figure 2),
the report's comparison bars, the sweep's forest plot and the prediction timeline.

Each figure is written twice with one stem: ``<name>.png`` (``DPI`` dots per inch, fixed size
``figsize * DPI`` pixels, no tight bounding box, so its dimensions are predictable) and beside it
``<name>.svg``, a vector copy for papers and slides. SVG rather than PDF: it is the vector format the
sweep's forest plot already wrote, HTML reports and browsers show it as it is, and its text diffs.

Nothing here changes the process's matplotlib state, so training inside a notebook leaves its inline
plots working: figures are ``matplotlib.figure.Figure`` objects drawn by ``FigureCanvasAgg`` (pyplot
and its backend are never touched), and every setting is made inside ``_isolated`` (matplotlib's
default style plus ``_RC``, restored on exit). Text is never parsed as mathtext (``text.parse_math``
False): class names and clip ids come from data folders, and a ``$`` in one raised after the metrics
were written. Labels may come escaped by ``aver.utils.for_plot`` or raw; ``_label`` shows both as
written (``\\$`` as ``$``, control characters as escapes). matplotlib is imported inside the
functions, so importing ``train`` costs nothing.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100
VECTOR = ".svg"  # the vector copy written beside each PNG
HEAD_KEYS = {"val_video": "video head", "val_audio": "audio head", "val_fusion": "fusion head"}
# Local settings of every figure: no mathtext; SVG ids from a fixed salt (the same figure, the same file).
_RC = {"text.parse_math": False, "svg.hashsalt": "aver"}


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """matplotlib's default style and ``_RC`` for the figures drawn inside; the caller's rcParams
    (a notebook's style, its ``text.parse_math``) and backend are back as they were on exit."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        yield


def _drawn_isolated(draw):
    """Decorator: ``draw`` runs inside ``_isolated``."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with _isolated():
            return draw(*args, **kwargs)

    return wrapper


def _figure(**kwargs: Any):
    """A ``Figure`` with its own Agg canvas (no pyplot, no backend; garbage-collected when dropped)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _label(text: Any) -> str:
    """``text`` as drawn: inert (``for_terminal``), and ``for_plot``'s ``\\$`` shown as ``$``
    (mathtext is off, so the escape would be drawn as a backslash)."""
    from aver.utils import for_terminal

    return for_terminal(text).replace("\\$", "$")


def _as_2d(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on GPU or tracking gradients
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{what} must be a non-empty 2-D array, got shape {a.shape}")
    return a


def _save(fig, path: str | Path) -> Path:
    """``path`` as PNG at ``DPI`` and its vector copy ``path.with_suffix(VECTOR)``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    fig.savefig(vector_path(path), format=VECTOR[1:], metadata={"Date": None})  # no date: reproducible
    return path


def vector_path(path: str | Path) -> Path:
    """The vector copy written beside the PNG ``path``."""
    return Path(path).with_suffix(VECTOR)


@_drawn_isolated
def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    path: str | Path,
    normalise: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a confusion matrix, each cell annotated with its count and its row percentage.

    Args:
        cm: counts [C, C] (list of lists or array), rows = true class, columns = predicted class.
        class_names: C labels for both axes.
        path: output PNG (and its SVG copy); parent folders are created.
        normalise: colour cells by row-normalised fraction (recall view; comparable across imbalanced
            classes) rather than by raw count.
        title: figure title.

    Returns:
        ``path``; the image is (0.6 C + 3.5) x (0.6 C + 2.5) inches at 100 dpi (wide for the colorbar).
    """
    counts = _as_2d(cm, "cm")
    c = counts.shape[0]
    if counts.shape != (c, c):
        raise ValueError(f"cm must be square [C, C], got {counts.shape}")
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c}x{c} confusion matrix")
    row_sums = counts.sum(axis=1, keepdims=True)
    # A class with no true samples has an all-zero row: show 0 %, not NaN.
    frac = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    shown = frac if normalise else counts
    side = 0.6 * c + 2.5
    fig = _figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalise else max(float(counts.max()), 1.0))
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class" if normalise else "count")
    threshold = 0.5 * (1.0 if normalise else max(float(counts.max()), 1.0))
    fontsize = max(5.0, 10.0 - 0.4 * c)
    for i in range(c):
        for j in range(c):
            colour = "white" if shown[i, j] > threshold else "black"
            text = f"{int(round(counts[i, j]))}\n{100 * frac[i, j]:.1f}%"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
    names = [_label(n) for n in class_names]
    ax.set_xticks(range(c), names, rotation=45, ha="right")
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_label(title))
    return _save(fig, path)


def _column(history: Sequence[dict], key: str) -> np.ndarray:
    """history[i][key] as floats, NaN where an epoch lacks it (matplotlib leaves a gap)."""
    return np.array([math.nan if h.get(key) is None else float(h[key]) for h in history])


@_drawn_isolated
def plot_learning_curves(
    history: Sequence[dict],
    path: str | Path,
    metric_name: str = "validation metric",
    metric_key: str = "val_metric",
) -> Path:
    """Two panels: train/validation loss per epoch, and the validation metric per epoch.

    Args:
        history: one dict per epoch with ``epoch``, ``train_loss``, ``val_loss`` and ``metric_key``;
            optional ``val_video`` / ``val_audio`` / ``val_fusion`` (the metric of each head) are drawn in
            the right panel too. Missing or None values leave gaps.
        path: output PNG (and its SVG copy).
        metric_name: label of the metric (e.g. "F1-macro", "mean CCC").
        metric_key: key of the metric in each history dict.

    Returns:
        ``path``; the image is 1100 x 400 pixels.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    if any("epoch" not in h for h in history):
        raise ValueError("every history entry needs an 'epoch'")
    epochs = _column(history, "epoch")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    metric_name = _label(metric_name)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        if any(h.get(key) is not None for h in history):
            ax_loss.plot(epochs, _column(history, key), marker="o", markersize=3, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    for key, label in HEAD_KEYS.items():
        if any(h.get(key) is not None for h in history):
            ax_metric.plot(epochs, _column(history, key), marker="o", markersize=3, label=label)
    if any(h.get(metric_key) is not None for h in history):
        # Drawn last, dashed and black: it usually coincides with one head's curve and must stay visible.
        ax_metric.plot(epochs, _column(history, metric_key), "k--", linewidth=1.5, label="selected")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric_name)
    ax_metric.set_title(f"validation {metric_name}")
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


@_drawn_isolated
def plot_attention(
    attn_video: Any,
    attn_audio: Any,
    path: str | Path,
    title: str = "Inter-modal attention",
) -> Path:
    """Heatmaps of the IFE attention weights alpha_ij, laid out like the paper's Figure 2.

    Left: IFE-Audio (audio fragments attend to video frames); right: IFE-Video (video frames attend to
    audio fragments). In each panel the horizontal axis is the time point of the attending modality and the
    vertical axis that of the attended one, so each column is one softmax distribution (sums to 1).

    Args:
        attn_video: IFE-Video weights, float [T, M] (row i: frame i over the M audio fragments).
        attn_audio: IFE-Audio weights, float [M, T] (row j: fragment j over the T video frames).
        path: output PNG (and its SVG copy).
        title: figure title.

    Returns:
        ``path``; the image is 1100 x 450 pixels.
    """
    video = _as_2d(attn_video, "attn_video")
    audio = _as_2d(attn_audio, "attn_audio")
    if audio.shape != video.shape[::-1]:
        raise ValueError(f"attn_video [T, M] and attn_audio [M, T] disagree: {video.shape} and {audio.shape}")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], audio, "IFE-Audio", "audio fragment (attending)", "video frame (attended)"),
        (axes[1], video, "IFE-Video", "video frame (attending)", "audio fragment (attended)"),
    )
    for ax, weights, name, xlabel, ylabel in panels:
        # Transposed so the attending time runs along x; origin at the bottom so time runs upwards on y.
        im = ax.imshow(weights.T, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="attention weight")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.suptitle(_label(title))
    return _save(fig, path)


@_drawn_isolated
def plot_comparison(
    rows: Sequence[tuple[str, float, float | None, float]], path: str | Path, title: str
) -> Path:
    """Our results beside the paper's, one pair of horizontal bars per row.

    ``rows`` are ``(label, ours, ours_std or None, paper)`` in % (``ours`` may be NaN when a run
    lacks the metric). Our bars carry the std over runs as an error bar; each bar is labelled with
    its value, so the page reads without the table. Saved as ``path`` (PNG) and its SVG copy.
    """
    n = len(rows)
    if n == 0:
        raise ValueError("plot_comparison needs at least one row")
    fig = _figure(figsize=(9.0, 1.5 + 0.55 * n))
    ax = fig.add_subplot()
    y = np.arange(n)
    ours = np.array([r[1] for r in rows], dtype=float)
    std = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=float)
    paper = np.array([r[3] for r in rows], dtype=float)
    ax.barh(y - 0.2, np.nan_to_num(ours), height=0.38, xerr=np.nan_to_num(std), color="#2b7bba", label="aver")
    ax.barh(y + 0.2, paper, height=0.38, color="#bbbbbb", label="paper")
    for k in range(n):
        if np.isfinite(ours[k]):
            ax.text(
                ours[k] + np.nan_to_num(std[k]) + 1, y[k] - 0.2, f"{ours[k]:.1f}", va="center", fontsize=8
            )
        ax.text(paper[k] + 1, y[k] + 0.2, f"{paper[k]:.1f}", va="center", fontsize=8, color="#555555")
    ax.set_yticks(y, [_label(r[0]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test metric (%)")
    fig.suptitle(_label(title), y=1 - 0.15 / (1.5 + 0.55 * n))
    ax.set_xlim(0, 115)
    height = 1.5 + 0.55 * n
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.42, right=0.97, top=1 - 0.85 / height, bottom=0.6 / height)
    return _save(fig, path)


@_drawn_isolated
def plot_forest(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "",
    xlabel: str = "difference to the full model",
) -> Path:
    """Forest plot of differences to a reference: one row per comparison, top row first.

    ``rows``: dicts with ``label``, ``diff``, ``ci_low``, ``ci_high`` and ``verdict`` (e.g. the
    ``differences`` of ``aver.train.stats.compare``, each given a label). Each row is a point at
    ``diff`` with its confidence interval as a whisker (only the point when a bound is ``None``;
    nothing when ``diff`` is ``None``), its label on the left and its verdict on the right; a dashed
    vertical line marks 0. Rows whose verdict reads "lower" or "higher" are drawn dark, the others
    grey. The figure is 9 x (1.3 + 0.4 rows) inches; it is saved as ``path`` (PNG) and beside it as
    an SVG with the same stem (vector, for papers). Labels and verdicts are drawn as written.

    Returns:
        the PNG path. Raises ValueError for no rows.
    """
    n = len(rows)
    if n == 0:
        raise ValueError("plot_forest needs at least one row")
    height = 1.3 + 0.4 * n
    fig = _figure(figsize=(9.0, height))
    ax = fig.add_subplot()
    transform = ax.get_yaxis_transform()  # x in axes fraction, y in data
    for k, row in enumerate(rows):
        verdict = str(row.get("verdict", ""))
        colour = "#1f3b73" if verdict.startswith(("lower", "higher")) else "#8a8a8a"
        diff, low, high = row.get("diff"), row.get("ci_low"), row.get("ci_high")
        if diff is not None and math.isfinite(float(diff)):
            diff = float(diff)
            if low is not None and high is not None:
                err = [[max(diff - float(low), 0.0)], [max(float(high) - diff, 0.0)]]
                ax.errorbar(diff, k, xerr=err, fmt="o", color=colour, ecolor=colour, capsize=3, markersize=5)
            else:
                ax.plot(diff, k, "o", color=colour, markersize=5)
        ax.text(
            1.02, k, _label(verdict), transform=transform, va="center", ha="left", fontsize=8, color=colour
        )
    ax.axvline(0.0, color="#444444", linestyle="--", linewidth=1)
    ax.set_yticks(np.arange(n), [_label(r.get("label", "")) for r in rows], fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)  # top row first
    ax.set_xlabel(_label(xlabel))
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    if title:
        fig.suptitle(_label(title), y=1 - 0.15 / height)
    fig.subplots_adjust(
        left=0.28, right=0.66, top=1 - (0.55 if title else 0.25) / height, bottom=0.6 / height
    )
    return _save(fig, path)


@_drawn_isolated
def plot_timeline(
    times: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    path: str | Path,
    ylabel: str,
    title: str = "",
    probabilities: bool = True,
) -> Path:
    """Values over time, one line per ``(name, values)`` of ``series`` (``aver predict --timeline``).

    With ``probabilities`` the y-axis is fixed to 0-1 (so clips and windows compare at a glance;
    markers at 0 or 1 are drawn whole); otherwise (regression values) it is scaled to the data.
    The figure is 8 x 3.2 inches; saved as ``path`` (PNG) and its SVG copy. Returns ``path``.
    """
    if not series:
        raise ValueError("plot_timeline needs at least one series")
    if any(len(values) != len(times) for _, values in series):
        raise ValueError(f"every series needs {len(times)} values, one per time")
    fig = _figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.add_subplot()
    for name, values in series:
        ax.plot(times, values, marker="o", ms=3, label=_label(name), clip_on=not probabilities)
    if probabilities:
        ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("time (s), window centre")
    ax.set_ylabel(_label(ylabel))
    if title:
        ax.set_title(_label(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=min(len(series), 4))
    return _save(fig, path)
