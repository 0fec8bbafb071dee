"""Per-epoch scalars of a run: ``history.json``, ``history.csv`` and TensorBoard event files.

All three are written after every epoch from the run's history (the list of epoch rows kept in
the resumable state), so a run killed mid-epoch and resumed has files that match its history
exactly: the TensorBoard folder is rewritten from the history when a run (re)starts, never
appended to with epochs that were lost. ``tensorboard --logdir runs`` shows every run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

TB_DIR = "tensorboard"
_EVENTS = "events.out.tfevents.*"


def tag(key: str) -> str | None:
    """TensorBoard tag of a history column (``None`` for a column that is not a scalar to plot)."""
    if key in ("epoch", "val_head", "clips"):
        return None
    if key.endswith("_loss"):
        return f"loss/{key.removesuffix('_loss')}"
    if key.endswith("_s"):
        return f"time/{key}"
    return f"validation/{key.removeprefix('val_')}"


class EpochLog:
    """Writes the history of ``folder``'s run; ``tensorboard=False`` writes only JSON and CSV."""

    def __init__(self, folder: Path, history: list[dict[str, Any]], tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.history = history
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
            if name is not None and isinstance(value, int | float):
                self.writer.add_scalar(name, float(value), int(row["epoch"]))

    def _files(self) -> None:
        (self.folder / "history.json").write_text(json.dumps(self.history, indent=2))
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        with open(self.folder / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.history)
