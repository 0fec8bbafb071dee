"""A GPU's first minutes, measured: one command that builds the environment, runs the CUDA tests and
every benchmark with its own time budget, and writes one file of tables.

    make gpu-check                 # on a GPU machine, from the repository root
    make gpu-check DRY=1           # the same steps on the CPU, tiny preset and sizes (< 2 minutes)
    python3 bench/gpu_check.py [--dry] [--out DIR] [--deadline 450] [--python PY] [--only STEP,...]

The orchestrator needs only the standard library (it runs under the machine's own ``python3``);
every step runs in a child process of the environment step 0 prepares:

0. ``venv``: reuse ``.venv`` when aver imports there; else, with wheels in ``.whl/`` (a machine with no
   package index: ``make gpu-wheels`` fetches them here, 41 MiB), ``.venv-gpu`` on the machine's own
   python3 with its site packages (torch, transformers, timm, OpenCV, ... of the GPU image) plus the
   wheels, and aver installed editable; else ``make venv`` from the index. Timed.
Then, in this order (by how much the project lacks each figure), each with its own budget in seconds;
a step whose budget no longer fits in what is left of ``--deadline`` is skipped with a line, and a
step that overruns its budget is stopped and reported with what it printed:

1. ``pytest-gpu``: ``pytest -m gpu`` (CUDA store equality, keep_device, resident training, AMP).
2. ``extract-raft_large``, 3. ``train-de3-cremad``, 4. ``extract-perceiver``, 5. ``baseline``,
6. ``train-de3-ravdess``, 7. ``extract-raft_small``, 8. ``train-<system>`` for each registered
   system that trains end to end on crops and waveforms (Mocanu 2023, AVT-CA):
   ``bench/extract.py`` per stage and end to end at 1280×720 with the paper architectures (random
   weights in the real formats, ``bench/paper_weights.py``), ``bench/train.py`` for DE-III at paper
   size on CREMA-D- (7,442 clips) and RAVDESS-size (1,440) caches and for the end-to-end systems,
   ``bench/baseline.py`` (aver against a per-frame batch-1 script) on the same device.

While a step runs, ``nvidia-smi`` is sampled every 250 ms: its mean GPU utilisation and peak memory
are reported per step. Each extraction stage's share of the device's dense bf16 peak is computed
from its frames/s and its FLOP count per frame (FLOPS below, counted with torch's FlopCounterMode,
multiply-add = 2). Writes ``gpu_check.md`` (tables ready to paste into ``bench/RESULTS.md``) and
``gpu_check.json`` into ``--out`` (default ``$OUT`` if set, else ``bench/out/``), and prints which of
issue 9's targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# GFLOP per frame (per flow pair, per image) of the paper architectures at a 224×224 crop
# (../shared/FIELD_NOTES.md, counted with torch.utils.flop_counter.FlopCounterMode). A 224 crop is
# padded into one 368×496 Perceiver tile; RAFT runs 12 updates.
FLOPS = {
    "optical flow": {"raft_large": 79.5, "raft_small": 17.6, "perceiver": 1887.0},
    "encode frames": 1.3,  # EfficientNet-B2 at 224
    "flow images + encode": 1.3,
}
# dense bf16 peak, TFLOP/s (vendor data sheets; SXM parts)
PEAK_BF16 = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

# seconds for all steps after the environment: within the 8 minutes a GPU's first call may take
# (start-up and the environment count apart); steps that finish early leave their time to the rest
DEADLINE, DRY_DEADLINE = 450.0, 110.0

# issue 9's targets (benchmarks, not tests)
TARGETS = {
    "raft_large": 1000.0,  # end-to-end frames/s at 1280×720
    "perceiver": 150.0,
    "e2e_over_slowest": 0.9,
    "cremad_fold_s": 30.0,  # one CREMA-D fold of DE-III at paper size
    "baseline_speedup": 20.0,
}


@dataclass
class Step:
    name: str
    budget: float  # seconds
    argv: list[str]  # after the environment's python
    json_out: str | None = None  # the file the step writes its figures to
    result: dict = field(default_factory=dict)


def plan(dry: bool, work: Path, end_to_end: list[str] | tuple[str, ...] = ()) -> list[Step]:
    """The steps, in the order they run, with their budgets (seconds); ``end_to_end``: the systems
    that train on crops and waveforms (``systems()`` asks the environment)."""
    if dry:  # the same scripts and flags, at sizes a 2-core CPU runs in seconds
        ext = ["--preset", "tiny", "--device", "cpu", "--actors", "3", "--clips", "2", "--seconds", "0.4"]
        ext += ["--size", "320x240"]
        flows = {"extract-dis": ("dis", 40)}
        de3 = ["--preset", "tiny", "--device", "cpu", "--batches", "2", "--batch-size", "4"]
        e2e = ["--preset", "tiny", "--device", "cpu", "--batches", "1", "--batch-size", "2"]
        sizes = {"train-de3-cremad": 60, "train-de3-ravdess": 40}
        baseline = None
    else:
        weights = str(work / "weights")
        ext = ["--preset", "paper", "--device", "cuda", "--weights", weights, "--size", "1280x720"]
        ext += ["--actors", "3", "--seconds", "2"]
        flows = {"extract-raft_large": ("raft_large", 90), "extract-perceiver": ("perceiver", 90)}
        flows["extract-raft_small"] = ("raft_small", 60)
        de3 = ["--preset", "paper", "--device", "cuda", "--batches", "20", "--batch-size", "16"]
        e2e = ["--preset", "paper", "--device", "cuda", "--batches", "5"]
        sizes = {"train-de3-cremad": 7442, "train-de3-ravdess": 1440}
        baseline = ["bench/baseline.py", "--device", "cuda", "--clips", "4", "--seconds", "2"]
        baseline += ["--size", "1280x720", "--weights", weights]

    def extract(name: str) -> Step:
        flow, budget = flows[name]
        out = str(work / f"{name}.json")
        return Step(name, budget, ["bench/extract.py", *ext, "--flow", flow, "--json", out], out)

    def train(name: str, args: list[str], budget: float, clips: int | None = None) -> Step:
        out = str(work / f"{name}.json")
        extra = ["--clips", str(clips)] if clips else []
        return Step(
            name,
            budget,
            ["bench/train.py", *args, *extra, "--workdir", str(work / "train"), "--json", out],
            out,
        )

    steps = [
        Step(
            "pytest-gpu",
            30 if dry else 90,
            ["-m", "pytest", "-q", "-ra", "-m", "gpu", "-p", "no:cacheprovider"],
        )
    ]
    names = list(flows)
    steps.append(extract(names[0]))
    if dry:
        steps.append(train("train-de3-cremad", de3, 40, 60))
    else:
        steps.append(train("train-de3-cremad", de3, 120, sizes["train-de3-cremad"]))
        steps.append(extract("extract-perceiver"))
        out = str(work / "baseline.json")
        steps.append(Step("baseline", 90, [*baseline, "--json", out], out))
        steps.append(train("train-de3-ravdess", de3, 50, sizes["train-de3-ravdess"]))
        steps.append(extract("extract-raft_small"))
    for name in end_to_end:
        steps.append(train(f"train-{name}", ["--model", name, *e2e], 20 if dry else 45))
    return steps


# -- step 0: the environment ------------------------------------------------------------------------
def _imports_aver(python: str) -> bool:
    probe = "import aver, aver.train, torch, zarr"
    return subprocess.run([python, "-c", probe], capture_output=True, cwd=ROOT).returncode == 0


def environment(python: str | None) -> tuple[str, dict]:
    """(the python every step runs under, how it was made and in how many seconds)."""
    t0 = time.perf_counter()
    if python:
        return python, {"how": f"given: {python}", "seconds": 0.0}
    venv = ROOT / ".venv" / "bin" / "python"
    if venv.exists() and _imports_aver(str(venv)):
        return str(venv), {"how": "reused .venv", "seconds": time.perf_counter() - t0}
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if wheels:
        gpu = ROOT / ".venv-gpu"
        py = gpu / "bin" / "python"
        if not (py.exists() and _imports_aver(str(py))):
            run = dict(check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            subprocess.run(["python3", "-m", "venv", "--system-site-packages", str(gpu)], **run)
            pip = [str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
            subprocess.run([*pip, *map(str, wheels)], **run)
            subprocess.run([*pip, "--no-build-isolation", "-e", "."], **run)
            shutil.rmtree(ROOT / "aver.egg-info", ignore_errors=True)
        how = f".venv-gpu: the machine's python3 and its packages + {len(wheels)} wheels from .whl/"
        return str(py), {"how": how, "seconds": time.perf_counter() - t0}
    subprocess.run(["make", "venv"], check=True, cwd=ROOT)
    return str(venv), {"how": "make venv (from the package index)", "seconds": time.perf_counter() - t0}


def systems(python: str) -> list[str]:
    """The registered systems that train end to end (on crops and waveforms), as the environment
    sees them (plugins included)."""
    probe = (
        "from aver.train.system import FEATURES\n"
        "from aver.train.systems import SYSTEMS\n"
        "print(' '.join(n for n in SYSTEMS.names() if SYSTEMS.get(n).trains_on != FEATURES))\n"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.split() if out.returncode == 0 else []


def describe(python: str) -> dict:
    """Device, driver, versions and date, as the environment's torch sees them."""
    probe = (
        "import json, platform, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'device': torch.cuda.get_device_name(0) if cuda else 'CPU ' + platform.machine(),"
        " 'torch': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),"
        " 'python': platform.python_version(), 'gpus': torch.cuda.device_count()}))\n"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    info = (
        json.loads(out.stdout) if out.returncode == 0 else {"device": "unknown", "error": out.stderr[-300:]}
    )
    smi = _smi(["--query-gpu=driver_version,memory.total", "--format=csv,noheader"])
    info["driver"] = smi.strip().splitlines()[0] if smi else "n/a (no nvidia-smi)"
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["cores"] = os.cpu_count()
    return info


def _smi(args: list[str]) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


class GpuSampler:
    """``nvidia-smi`` every 250 ms in the background: mean utilisation and peak memory of a step."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            query = [
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "250",
            ]
            self.proc = subprocess.Popen(["nvidia-smi", *query], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def mark(self) -> int:
        return len(self.samples)

    def since(self, start: int) -> dict:
        window = self.samples[start:]
        if not window:
            return {"gpu_util_pct": None, "gpu_mem_peak_gib": None}
        return {
            "gpu_util_pct": sum(u for u, _ in window) / len(window),
            "gpu_mem_peak_gib": max(m for _, m in window) / 1024,
        }

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()


# -- running the steps ------------------------------------------------------------------------------
def run_step(step: Step, python: str, left: float, sampler: GpuSampler, env: dict) -> None:
    """Run ``step`` within ``min(budget, left)`` seconds; fills ``step.result``."""
    if step.budget > left:
        step.result = {
            "status": "skipped",
            "why": f"its budget ({step.budget:.0f} s) exceeds the {left:.0f} s left",
        }
        print(f"[gpu-check] {step.name}: skipped ({step.result['why']})", flush=True)
        return
    print(f"[gpu-check] {step.name}: running (budget {step.budget:.0f} s)", flush=True)
    mark, t0 = sampler.mark(), time.perf_counter()
    try:
        out = subprocess.run(
            [python, *step.argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=step.budget
        )
        status = "ok" if out.returncode == 0 else f"failed (exit {out.returncode})"
        text = out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        status = f"stopped at its budget ({step.budget:.0f} s)"
        text = _text(e.stdout) + _text(e.stderr)
    step.result = {"status": status, "seconds": time.perf_counter() - t0, **sampler.since(mark)}
    step.result["output"] = _tables(text) or text[-3000:]
    if step.json_out and Path(step.json_out).is_file():
        step.result["figures"] = json.loads(Path(step.json_out).read_text())
    if step.name == "pytest-gpu":
        step.result["summary"] = next((x for x in reversed(text.splitlines()) if " in " in x), text[-200:])
    print(f"[gpu-check] {step.name}: {status} in {step.result['seconds']:.0f} s", flush=True)


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _tables(text: str) -> str:
    """The lines a benchmark prints for people (tables, device, summary), without progress bars."""
    keep = ("|", "machine:", "device:", "preset ", "slowest", "aver speed-up", "train clips", "built ")
    return "\n".join(x for x in text.splitlines() if x.startswith(keep) or " clips of " in x)


def _peak(device: str) -> float | None:
    for name, tflops in PEAK_BF16.items():  # most specific first ("H100 PCIe" before "H100")
        if name in device:
            return tflops
    return None


def roofline(step: Step, device: str, dry: bool) -> dict[str, float | None]:
    """Each extraction stage's achieved TFLOP/s as a share of the device's bf16 peak."""
    fig, peak = step.result.get("figures"), _peak(device)
    if not fig or dry or peak is None:
        return {}
    shares = {}
    for stage, fps in fig["stages"].items():
        gflop = FLOPS.get(stage)
        if isinstance(gflop, dict):
            gflop = gflop.get(fig["flow"])
        if gflop:
            shares[stage] = 100 * fps * gflop / 1e3 / peak
    return shares


def targets(steps: dict[str, Step]) -> list[tuple[str, str, str]]:
    """(issue 9's target, our figure, met / not met / not measured)."""

    def fig(name: str) -> dict | None:
        return steps[name].result.get("figures") if name in steps else None

    rows = []
    for flow in ("raft_large", "perceiver"):
        f = fig(f"extract-{flow}")
        goal = TARGETS[flow]
        if f:
            rows.append(
                (
                    f"{flow} end to end ≥ {goal:g} frames/s at 1280×720",
                    f"{f['end_to_end']:.0f}",
                    _met(f["end_to_end"] >= goal),
                )
            )
            ratio = f["e2e_over_slowest"]
            rows.append(
                (
                    f"{flow}: end to end ≥ 90 % of the slowest stage",
                    f"{100 * ratio:.0f} % ({f['slowest']})",
                    _met(ratio >= 0.9),
                )
            )
        else:
            rows.append((f"{flow} end to end ≥ {goal:g} frames/s at 1280×720", "–", "not measured"))
    f = fig("train-de3-cremad")
    if f and f.get("train_clips", 0) > 3000:
        rows.append(
            ("DE-III paper size, one CREMA-D fold ≤ 30 s", f"{f['fold_s']:.0f} s", _met(f["fold_s"] <= 30))
        )
    else:
        rows.append(("DE-III paper size, one CREMA-D fold ≤ 30 s", "–", "not measured"))
    f = fig("baseline")
    if f and f.get("speedup"):
        rows.append(
            (
                "≥ 20× the per-frame batch-1 baseline, same device",
                f"{f['speedup']:.1f}×",
                _met(f["speedup"] >= 20),
            )
        )
    else:
        rows.append(("≥ 20× the per-frame batch-1 baseline, same device", "–", "not measured"))
    return rows


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(info: dict, env: dict, steps: list[Step], dry: bool) -> str:
    lines = [
        f"## GPU check{' (dry run: CPU, tiny preset and sizes)' if dry else ''}",
        "",
        f"{info['device']}; driver {info['driver']}; torch {info.get('torch')} (CUDA {info.get('cuda')}, cuDNN "
        f"{info.get('cudnn')}); Python {info.get('python')}; {info['cores']} CPU cores; {info['date']}.",
        f"Environment: {env['how']} in {env['seconds']:.0f} s.",
        "",
        "| step | status | seconds | GPU util (mean) | GPU memory (peak) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        r = s.result
        util = "–" if r.get("gpu_util_pct") is None else f"{r['gpu_util_pct']:.0f} %"
        mem = "–" if r.get("gpu_mem_peak_gib") is None else f"{r['gpu_mem_peak_gib']:.1f} GiB"
        status = r.get("status", "not run") + (f": {r['why']}" if "why" in r else "")
        lines.append(f"| {s.name} | {status} | {r.get('seconds', 0):.0f} | {util} | {mem} |")
    lines += ["", "### Targets of issue 9", "", "| target | measured | |", "| --- | --- | --- |"]
    lines += [f"| {t} | {v} | {m} |" for t, v, m in targets({s.name: s for s in steps})]
    for s in steps:
        r = s.result
        if "output" not in r:
            continue
        lines += ["", f"### {s.name}", ""]
        if "summary" in r:
            lines.append(f"pytest: {r['summary']}")
        shares = roofline(s, info["device"], dry)
        if shares:
            lines.append("share of the bf16 peak: " + ", ".join(f"{k} {v:.1f} %" for k, v in shares.items()))
        lines += ["", "```", r["output"].strip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dry", action="store_true", help="CPU, tiny preset and sizes: checks the script in < 2 min"
    )
    ap.add_argument("--out", help="folder for gpu_check.md / .json (default $OUT, else bench/out)")
    ap.add_argument(
        "--deadline", type=float, help="seconds for all steps after the environment (default 450; dry 110)"
    )
    ap.add_argument("--python", help="run the steps under this python instead of building an environment")
    ap.add_argument("--only", help="comma-separated step names (default: all)")
    args = ap.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "out")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    python, env_info = environment(args.python)
    print(f"[gpu-check] environment: {env_info['how']} ({env_info['seconds']:.0f} s)", flush=True)
    info = describe(python)
    steps = plan(args.dry, work, systems(python))
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            ap.error(f"--only {','.join(sorted(unknown))}: steps are {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in wanted]
    child_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "AVER_HOME": str(work / "home"),
    }
    deadline = time.perf_counter() + (args.deadline or (DRY_DEADLINE if args.dry else DEADLINE))
    sampler = GpuSampler()
    try:
        for step in steps:
            run_step(step, python, deadline - time.perf_counter(), sampler, child_env)
    finally:
        sampler.close()
    text = render(info, env_info, steps, args.dry)
    (out / "gpu_check.md").write_text(text)
    doc = {"info": info, "environment": env_info, "steps": {s.name: s.result for s in steps}}
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
    print(text.split("### Targets of issue 9")[1].split("\n### ")[0].strip())
    print(f"[gpu-check] tables: {out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
