"""Per-epoch scalars of a run: ``history.json``, ``history.csv`` and TensorBoard event files.

All three are written after every epoch from the run's history (the list of epoch rows kept in
the resumable state), so a run killed mid-epoch and resumed has files that match its history
exactly: the TensorBoard folder is rewritten from the history when a run (re)starts, never
appended to with epochs that were lost. ``tensorboard --logdir runs`` shows every run.

TensorBoard tags (``tag``): ``loss/train``, ``loss/val``; ``train/lr`` (the learning rate, when the
epoch row has ``lr``); ``time/<key>_s``; ``validation/metric`` (the selected head's validation
metric; kept for dashboards and scripts that read it) and the same values under
``validation/<metric name>`` (e.g. ``validation/f1_macro``) when the metric is named;
``validation/<head>`` per head. At the end of a run ``log_results`` adds the test metrics as
scalars (``test/<metric>`` of the reported head, ``test/<head>/<metric>`` of each head) and the
hyper-parameters with the reported head's test metrics for TensorBoard's HPARAMS tab.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

TB_DIR = "tensorboard"
_EVENTS = "events.out.tfevents.*"
_RESULTS = ".results"  # suffix of the results' event file: never the name of the epochs' file
# Settings that are not hyper-parameters: where things are, how the run is shown, and credentials.
_NOT_HPARAMS = (
    "out",
    "progress",
    "tensorboard",
    "resume",
    "storage_options",
    "device",
    "resident",
    "read_through",
    "data.inputs_in_memory",
)


def tag(key: str) -> str | None:
    """TensorBoard tag of a history column (``None`` for a column that is not a scalar to plot)."""
    if key in ("epoch", "val_head", "clips"):
        return None
    if key == "lr" or key.startswith("lr_"):
        return f"train/{key}"
    if key.endswith("_loss"):
        return f"loss/{key.removesuffix('_loss')}"
    if key.endswith("_s"):
        return f"time/{key}"
    return f"validation/{key.removeprefix('val_')}"


class EpochLog:
    """Writes the history of ``folder``'s run; ``tensorboard=False`` writes only JSON and CSV.

    ``metric``: the name of the validation metric in ``val_metric`` (``Task.select_metric``), also
    the tag ``validation/<metric>``."""

    def __init__(
        self,
        folder: Path,
        history: list[dict[str, Any]],
        tensorboard: bool = True,
        metric: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.history = history
        self.metric = metric
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            logdir = self.folder / TB_DIR
            for old in logdir.glob(_EVENTS):  # only our own event files, inside the run folder
                old.unlink()
            self.writer = SummaryWriter(logdir=str(logdir), flush_secs=5)
            for row in history:
                self._scalars(row)
            self.writer.flush()
        self._files()

    def add(self, row: dict[str, Any]) -> None:
        """One finished epoch (already appended to the history)."""
        if self.writer is not None:
            self._scalars(row)
            self.writer.flush()
        self._files()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _scalars(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            name = tag(key)
            if name is not None and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(name, float(value), int(row["epoch"]))
                if key == "val_metric" and self.metric and self.metric != "metric":
                    self.writer.add_scalar(f"validation/{self.metric}", float(value), int(row["epoch"]))

    def _files(self) -> None:
        (self.folder / "history.json").write_text(json.dumps(self.history, indent=2))
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        with open(self.folder / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.history)


def log_results(folder: Path, train_config: dict[str, Any], metrics: dict[str, Any], step: int) -> None:
    """The end of a run in ``folder``'s TensorBoard log: every test metric as a scalar at ``step``
    (the last epoch), and the hyper-parameters (``hparams``) with the reported head's test metrics.

    ``metrics`` is what ``train_fold`` returns (``test``: per head; ``reported_head``). Written to an
    event file of its own beside the epochs' one; ``EpochLog`` removes it with the others when a
    run (re)starts, so a resumed run logs its results once."""
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summaries

    from .api import flat_metrics

    test = metrics.get("test", {})
    reported = metrics.get("reported_head")
    scalars = {"test/loss": test["loss"]} if _scalar(test.get("loss")) else {}  # over the split
    for head, values in test.items():
        if isinstance(values, dict):
            flat = {k: v for k, v in flat_metrics(values).items() if k != "n"}
            scalars |= {f"test/{head}/{k}": v for k, v in flat.items()}
            if head == reported:
                scalars |= {f"test/{k}": v for k, v in flat.items()}
    # The HPARAMS tab compares runs by the reported head's overall metrics (no class-wise ones).
    main = {f"test/{k}": float(v) for k, v in test.get(reported, {}).items() if _scalar(v) and k != "n"}
    main |= {k: float(v) for k, v in scalars.items() if k == "test/loss"}
    with SummaryWriter(logdir=str(Path(folder) / TB_DIR), filename_suffix=_RESULTS) as writer:
        for name, value in scalars.items():
            writer.add_scalar(name, float(value), step)
        for summary in hparams_summaries(hparams(train_config), main):  # experiment, session start, end
            writer.file_writer.add_summary(summary)


def hparams(train_config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``train_config`` flat (``data.batch_size``), without the settings in ``_NOT_HPARAMS``; values
    TensorBoard cannot show as they are (``None``, lists) as JSON text."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in train_config.items():
        name = f"{prefix}{key}"
        if name in _NOT_HPARAMS:
            continue
        if isinstance(value, dict):
            out |= hparams(value, f"{name}.")
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
