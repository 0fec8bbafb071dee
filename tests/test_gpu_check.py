"""``make gpu-check``: its dry run on the CPU (so the script a GPU machine runs cannot rot), its
budgets, its targets and roofline arithmetic, and the bench flags it relies on (issue 21)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gpu_check  # noqa: E402


def test_the_dry_run_writes_every_step_and_the_targets(tmp_path):
    out = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry", "--out", str(tmp_path), "--python", sys.executable],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = (tmp_path / "gpu_check.md").read_text()
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    for step in gpu_check.plan(True, tmp_path, gpu_check.systems(sys.executable)):
        assert f"| {step.name} |" in text  # ran, stopped or skipped: never missing
    assert doc["steps"]["pytest-gpu"]["status"] == "ok" and "skipped" in doc["steps"]["pytest-gpu"]["summary"]
    ran = [s for s in doc["steps"].values() if s.get("status") == "ok"]
    assert len(ran) >= 2
    figures = doc["steps"]["extract-dis"].get("figures")
    if figures:  # the bench's JSON came through: stages, end to end and its ratio
        assert figures["end_to_end"] > 0 and "optical flow" in figures["stages"]
    assert "### Targets of issue 9" in text and "torch" in text and doc["info"]["date"]


def test_a_step_whose_budget_does_not_fit_is_skipped_with_a_line(capsys):
    step = gpu_check.Step("train-avtca", 45, ["-c", "raise SystemExit(1)"])
    gpu_check.run_step(step, sys.executable, 10.0, gpu_check.GpuSampler(), {})
    assert step.result["status"] == "skipped" and "45 s" in step.result["why"]
    assert "train-avtca: skipped" in capsys.readouterr().out


def test_a_step_over_its_budget_is_stopped_and_keeps_its_output():
    code = "import time; print('| stage | 1 |', flush=True); time.sleep(30)"
    step = gpu_check.Step("extract-raft_large", 2, ["-c", code])
    gpu_check.run_step(step, sys.executable, 100.0, gpu_check.GpuSampler(), {})
    assert (
        step.result["status"].startswith("stopped at its budget") and "| stage | 1 |" in step.result["output"]
    )


def test_the_gpu_plan_runs_the_paper_architectures_on_cuda(tmp_path):
    e2e = gpu_check.systems(sys.executable)
    assert len(e2e) >= 2  # Mocanu 2023 and AVT-CA
    steps = {s.name: s for s in gpu_check.plan(False, tmp_path, e2e)}
    assert {f"train-{name}" for name in e2e} <= set(steps)
    assert list(steps)[:3] == ["pytest-gpu", "extract-raft_large", "train-de3-cremad"]
    assert set(steps) >= {"extract-perceiver", "extract-raft_small", "baseline", "train-de3-ravdess"}
    raft = steps["extract-raft_large"].argv
    for flag in ("--preset paper", "--device cuda", "--size 1280x720", "--flow raft_large"):
        assert flag in " ".join(raft)
    assert "--weights" in raft and "--device cuda" in " ".join(steps["baseline"].argv)
    assert "--clips 7442" in " ".join(steps["train-de3-cremad"].argv)
    # every step can run within the deadline, and the deadline leaves room for the environment in 8 min
    assert max(s.budget for s in steps.values()) <= gpu_check.DEADLINE <= 8 * 60 - 30


def _step(name: str, figures: dict) -> gpu_check.Step:
    step = gpu_check.Step(name, 1, [])
    step.result = {"status": "ok", "figures": figures}
    return step


def test_targets_and_roofline_from_the_figures():
    raft = {"flow": "raft_large", "stages": {"optical flow": 1200.0, "encode frames": 5000.0}}
    raft.update(end_to_end=1100.0, e2e_over_slowest=0.92, slowest="optical flow")
    perceiver = {"flow": "perceiver", "stages": {"optical flow": 100.0}, "end_to_end": 90.0}
    perceiver.update(e2e_over_slowest=0.9, slowest="optical flow")
    steps = [
        _step("extract-raft_large", raft),
        _step("extract-perceiver", perceiver),
        _step("train-de3-cremad", {"train_clips": 4900, "fold_s": 41.0}),
        _step("baseline", {"speedup": 25.0}),
    ]
    rows = {t: (v, m) for t, v, m in gpu_check.targets({s.name: s for s in steps})}
    assert rows["raft_large end to end ≥ 1000 frames/s at 1280×720"] == ("1100", "met")
    assert rows["perceiver end to end ≥ 150 frames/s at 1280×720"] == ("90", "NOT met")
    assert rows["DE-III paper size, one CREMA-D fold ≤ 30 s"] == ("41 s", "NOT met")
    assert rows["≥ 20× the per-frame batch-1 baseline, same device"][1] == "met"
    shares = gpu_check.roofline(steps[0], "NVIDIA H100 80GB HBM3", dry=False)
    assert shares["optical flow"] == pytest.approx(100 * 1200 * 79.5 / 1e3 / 989)
    assert shares["encode frames"] == pytest.approx(100 * 5000 * 1.3 / 1e3 / 989)
    assert (
        gpu_check._peak("NVIDIA H100 PCIe") == 756 and gpu_check.roofline(steps[0], "CPU x86_64", False) == {}
    )


def test_make_gpu_check_passes_dry_and_the_wheels_fit_a_carry():
    out = subprocess.run(["make", "-n", "gpu-check", "DRY=1"], capture_output=True, text=True, cwd=ROOT)
    assert "bench/gpu_check.py --dry" in out.stdout
    wheels = subprocess.run(["make", "-n", "gpu-wheels"], capture_output=True, text=True, cwd=ROOT).stdout
    for name in ("zarr", "dask", "distributed", "av", "tensorboardX", "facenet-pytorch==2.6.0"):
        assert name in wheels


def test_bench_flow_flags_drop_the_presets_perceiver_weights(tmp_path):
    """issue 21 #9: --flow raft with the paper preset no longer keeps the Perceiver hub id."""
    from argparse import Namespace

    from bench.extract import _weight_sets

    sets = _weight_sets(Namespace(flow="raft", weights=None))
    assert sets == ['flow.backend="raft"', "flow.weights=null", 'flow.variant="large"']
    assert _weight_sets(Namespace(flow="dis", weights=None))[:2] == [
        'flow.backend="dis"',
        "flow.weights=null",
    ]
    from aver.extract.presets import preset_config
    from aver.overrides import apply_overrides

    cfg = apply_overrides(
        preset_config("paper", "synthetic"), _weight_sets(Namespace(flow="raft_small", weights=None))
    )
    assert (cfg.flow.backend, cfg.flow.variant, cfg.flow.weights) == ("raft", "small", None)


def test_paper_weights_write_raft_in_torchvisions_format_that_the_loader_reads(tmp_path):
    from aver.extract.config import FlowConfig
    from aver.extract.flow.raft import RAFTFlow
    from bench.paper_weights import flow_weights

    path = flow_weights(tmp_path, "raft_small")
    assert path.name == "raft_small.pth"
    RAFTFlow(FlowConfig(backend="raft", variant="small", weights=str(path)))  # loads with weights_only
