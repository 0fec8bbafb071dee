"""`aver demo` (what `make demo` runs): extract the embedded corpus, train, report far above chance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_extracts_trains_and_beats_chance(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "aver",
            "demo",
            "--cache",
            str(tmp_path / "caches"),
            "--data",
            str(tmp_path / "data"),
            "--runs",
            str(tmp_path / "runs"),
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "done now: 96" in out.stdout and "failed: 0" in out.stdout
    assert "reported head" in out.stdout and "chance level: 0.25" in out.stdout
    assert "report: " in out.stdout and (tmp_path / "runs" / "report.md").is_file()
    assert "aver predict " in out.stdout and "grace_hopper.mp4" in out.stdout  # an unseen face, scored
    metrics = json.loads((tmp_path / "runs/synthetic/de3/fold1/metrics.json").read_text())
    # 4 balanced classes: chance is 0.25; the corpus is built to be learnable from faces, flow and voice
    assert metrics["test_reported"]["accuracy"] >= 0.5, metrics["test_reported"]
    for png in ("confusion.png", "learning_curves.png", "attention.png"):
        assert (tmp_path / "runs/synthetic/de3/fold1" / png).stat().st_size > 1000
