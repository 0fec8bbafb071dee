"""``aver sweep``: runs on a real Dask cluster (a ``dask scheduler`` and two ``dask worker``
processes), survives a killed worker with the same metrics as runs trained one by one, resumes by
training nothing, names failed runs, refuses bad input in one line; and ``--table``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aver.errors import CheckpointError, ConfigError
from aver.testing import build_feature_cache

TINY = ["--preset", "tiny", "--set", "model.d_model=16"]
# long enough per run (~0.1 s an epoch) that a worker can be killed in the middle of one
SLOW = ["--epochs", "30", "--patience", "30"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return build_feature_cache(str(tmp_path_factory.mktemp("sweep") / "toy.zarr"))


def _aver(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AVER_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: killing it kills the nanny and its worker
    )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-threaded workers, each its own process group."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start(
        ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], tmp_path / "s.log"
    )
    worker = [
        "worker",
        address,
        "--nthreads",
        "1",
        "--no-dashboard",
        "--memory-limit",
        "0",
        "--death-timeout",
        "60",
    ]
    workers = [_start([*worker, "--name", f"w{i}"], tmp_path / f"w{i}.log") for i in range(2)]
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
    yield address, workers
    for proc in [*workers, scheduler]:
        _kill(proc)


def _runs_in_progress(folder: Path) -> list[Path]:
    return [
        p.parent.parent
        for p in folder.rglob("checkpoint/last.safetensors")
        if not (p.parent.parent / "metrics.json").exists()
    ]


def test_a_sweep_on_a_running_cluster_survives_a_killed_worker(cache, dask_cluster, tmp_path):
    """2 variants × 2 folds (plus the full model as reference) through --scheduler; one worker is
    killed while both are training; its run resumes on the other from its checkpoint, and every
    run's metrics equal the same run trained here on its own. The same command again trains nothing."""
    address, workers = dask_cluster
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--cache",
        cache,
        "--variants",
        "none_ife,flow_only",
        "--folds",
        "1,2",
        "--out",
        str(out),
    ]
    args += [*TINY, *SLOW, "--scheduler", address, "-q"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "aver", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + 240
    while len(_runs_in_progress(out)) < 2 and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert sweep.poll() is None, "the sweep ended before both workers were training: " + sweep.stdout.read()
    _kill(workers[1])
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output
    assert "6 runs: 6 trained, 0 already complete, 0 failed" in output
    logs = [p.read_text() for p in out.rglob("train.log")]
    assert any("resumed from" in text for text in logs), (
        "the killed worker's run did not resume from its checkpoint"
    )

    # the same runs, one by one in this process, with the workers' one thread
    import torch

    from aver.train.config import TrainConfig
    from aver.train.recipe import train_fold

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for run in sorted(out.glob("*/fold*")):
            saved = json.loads((run / "config.json").read_text())["train_config"]
            direct = train_fold(
                TrainConfig.from_dict({**saved, "out": str(tmp_path / "direct" / run.relative_to(out))})
            )
            swept = json.loads((run / "metrics.json").read_text())
            for head, metrics in direct["test"].items():
                if isinstance(metrics, dict):
                    for k, v in metrics.items():
                        if isinstance(v, float):
                            assert swept["test"][head][k] == pytest.approx(v, abs=1e-6), (run, head, k)
    finally:
        torch.set_num_threads(threads)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    again = _aver(*args)
    assert again.returncode == 0, again.stderr
    assert "6 runs: 0 trained, 6 already complete, 0 failed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
    doc = json.loads((out / "sweep.json").read_text())
    assert {d["arm"] for d in doc["differences"]} == {"none_ife", "flow_only"}
    assert (out / "sweep_forest.png").stat().st_size > 0 and (out / "sweep_forest.svg").is_file()


def test_a_failed_run_is_named_and_the_others_complete(cache, tmp_path):
    """A run whose folder holds a broken checkpoint fails with its cause; the sweep goes on, writes
    the others' statistics and exits 8; the failed run is listed in sweep.md."""
    out = tmp_path / "sweep"
    broken = out / "none_ife" / "fold2" / "checkpoint"
    broken.mkdir(parents=True)
    (broken / "last.safetensors").write_bytes(b"not a checkpoint")
    r = _aver(
        "sweep",
        "--cache",
        cache,
        "--variants",
        "none_ife",
        "--folds",
        "1-2",
        "--out",
        str(out),
        *TINY,
        "--epochs",
        "2",
        "-q",
    )
    assert r.returncode == 8, r.stdout + r.stderr
    assert "FAILED none_ife/fold2:" in r.stdout
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("aver: error: 1 of 4 runs failed")
    assert "3 trained" in r.stdout
    doc = json.loads((out / "sweep.json").read_text())
    assert list(doc["failed"]) == ["none_ife/fold2"]
    assert "Failed runs" in (out / "sweep.md").read_text()
    # the report shows the sweep's intervals and verdicts
    report = _aver("report", str(out))
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "## Sweep: de3" in text and "95 % CI" in text and "(n=1)" in text


def test_a_finished_run_with_other_settings_is_refused_before_anything_trains(cache, tmp_path):
    out = tmp_path / "sweep"
    base = [
        "sweep",
        "--cache",
        cache,
        "--variants",
        "none_ife",
        "--folds",
        "1",
        "--out",
        str(out),
        *TINY,
        "-q",
    ]
    assert _aver(*base, "--epochs", "1").returncode == 0
    r = _aver(*base, "--epochs", "2")
    assert r.returncode == 5, r.stderr
    assert "holds a finished run with other settings (epochs: 1 there, 2 here)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "no_such"], "unknown de3 variant 'no_such'"),
        (["--table", "de3:9"], "unknown table of de3's paper 'de3:9'"),
        (["--table", "de3:4"], "each row needs its own cache"),
        (["--table", "de3"], "--table takes SYSTEM:N"),
        (["--variants", "none_ife", "--folds", "3-1"], "is empty"),
        (["--variants", "none_ife", "--folds", ","], "--folds takes fold numbers"),
        (["--variants", "none_ife", "--folds", "9"], "fold 9 does not exist"),
        (["--variants", "none_ife", "--seeds", "a"], "--seeds takes seeds"),
        ([], "a sweep needs its variants"),
        (["--model", "mocanu2023", "--variants", "full"], "--inputs crops,wave"),
    ],
)
def test_bad_input_gets_one_line(cache, tmp_path, args, message):
    r = _aver("sweep", "--cache", cache, "--out", str(tmp_path / "s"), *TINY, *args)
    assert r.returncode == 2 or r.returncode == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aver: error:") and message in lines[0], r.stderr
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("metrics.json"))


def test_a_scheduler_that_does_not_answer_is_one_line_within_the_timeout(cache, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.time()
    r = _aver("sweep", "--cache", cache, "--variants", "none_ife", "--folds", "1", "--out", str(tmp_path / "s"),
              *TINY, "--scheduler", address, "--connect-timeout", "2")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert time.time() - t0 < 60
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and f"cannot reach the Dask scheduler at {address}: no answer within 2 s" in line[0]


def test_paper_tables_as_plans():
    from aver.train.paper import paper_table

    t = paper_table("de3:2")
    assert (t.system, t.variants, t.protocols, t.datasets) == (
        "de3",
        ["de3", "none_ife"],
        ["cache"],
        ["cremad"],
    )
    t = paper_table("de3:3")
    assert t.variants[0] == "flow_only" and "transformer" in t.variants
    t = paper_table("mocanu2023:1")
    assert t.protocols == ["mocanu2023-10fold"] and t.variants[-1] == "triplet"
    assert paper_table("avtca:9").variants == ["it_1", "it_4", "ct_1", "ct_4", "full"]
    with pytest.raises(ConfigError, match="de3:4"):
        paper_table("de3:4")
    with pytest.raises(ConfigError, match="choose one of: de3:1, de3:2, de3:3, de3:4"):
        paper_table("de3:7")


def test_a_table_sweep_runs_its_variants_and_says_the_dataset_differs(cache, tmp_path):
    from aver.train.sweeper import sweep

    doc = sweep(
        cache, table="de3:2", folds=[1], out=str(tmp_path / "t"), preset="tiny", epochs=1,
        overrides={"model.d_model": 16}, progress=False,
    )  # fmt: skip
    assert doc["settings"]["variants"] == ["de3", "none_ife"]
    assert any("this cache holds" in n for n in doc["settings"]["notes"])
    assert set(doc["runs"]) == {"de3/fold1", "none_ife/fold1"}
    assert not doc["failed"]
    with pytest.raises(ConfigError, match="not of --model avtca"):
        sweep(cache, table="de3:2", system="avtca", out=str(tmp_path / "u"))


def test_run_folders_are_the_ones_cv_makes(cache, tmp_path):
    """A sweep's arm folder holds the runs and cv_summary `aver cv` writes for that variant; a cv
    over the same folder afterwards trains nothing."""
    from aver.train import cross_validate
    from aver.train.sweeper import sweep

    kw = {"preset": "tiny", "epochs": 1, "overrides": {"model.d_model": 16}}
    sweep(cache, variants=["none_ife"], folds=[1, 2], seeds=[0, 1], out=str(tmp_path), progress=False, **kw)
    for name in ("fold1/seed0", "fold1/seed1", "fold2/seed0", "fold2/seed1"):
        assert (tmp_path / "none_ife" / name / "metrics.json").is_file()
    summary = json.loads((tmp_path / "none_ife" / "cv_summary.json").read_text())
    assert summary["summary"]["reported"]["accuracy"]["n"] == 4
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")}
    again = cross_validate(
        cache, [1, 2], seeds=2, variant="none_ife", out=str(tmp_path / "none_ife"), progress=False, **kw
    )
    assert again["reported"]["accuracy"]["n"] == 4
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")} == stamps


def test_local_workers_pin_one_device_each(monkeypatch):
    from aver import cluster

    envs = cluster.worker_devices(3, "cpu")
    assert all(e[cluster.THREADS_ENV] == e["OMP_NUM_THREADS"] for e in envs)
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in cluster.worker_devices(3, "cuda")] == ["0", "1", "0"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in cluster.worker_devices(2, "cuda:1")] == ["1", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="none is visible"):
        cluster.worker_devices(2, "cuda")


def test_a_mismatched_run_is_a_checkpoint_error_in_the_library(cache, tmp_path):
    from aver.train.sweeper import sweep

    kw = {
        "preset": "tiny",
        "overrides": {"model.d_model": 16},
        "progress": False,
        "folds": [1],
        "out": str(tmp_path),
    }
    sweep(cache, variants=["de3"], epochs=1, **kw)
    with pytest.raises(CheckpointError, match="--restart"):
        sweep(cache, variants=["de3"], epochs=2, **kw)
    doc = sweep(cache, variants=["de3"], epochs=2, resume=False, **kw)
    assert doc["runs"]["de3/fold1"]["status"] == "ok"
