"""The `aver` command line: one namespace, user errors as one clear line, nothing half-made.

Every reproduced defect of the package restructuring has a regression test here: an unknown
variant / preset / model key, `--fold 0`, a missing path, a `train.py` in the working directory,
a missing extra; each exits non-zero with one line naming the problem and leaves no run folder.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aver import __version__
from aver.testing import build_feature_cache

ROOT = Path(__file__).resolve().parents[1]


def aver(*args: str, cwd: Path | None = None, pre: str = "") -> subprocess.CompletedProcess:
    """Run the command line in a fresh interpreter (``pre`` runs first, e.g. to hide a module)."""
    code = f"{pre}\nimport sys\nfrom aver.cli import main\nsys.exit(main({list(args)!r}))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("aver: error:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return build_feature_cache(str(tmp_path_factory.mktemp("cli") / "toy.zarr"), n_clips=20)


def test_version_and_python_m():
    out = subprocess.run([sys.executable, "-m", "aver", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"aver {__version__}"


def test_a_users_train_py_does_not_shadow_aver(tmp_path):
    for name in ("train.py", "extract.py"):
        (tmp_path / name).write_text("raise SystemExit('the user script was imported')\n")
    out = subprocess.run(
        [sys.executable, "-m", "aver", "variants"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0 and "de3" in out.stdout, out.stderr
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('aver.train').origin)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and str(tmp_path) not in out.stdout


def test_nothing_installs_top_level_extract_or_train(tmp_path):
    code = "import importlib.util as u; print(u.find_spec('extract'), u.find_spec('train'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "None None"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--variant", "nope"], "unknown de3 variant 'nope'"),
        (["--model", "nope"], "invalid choice: 'nope'"),
        (["--preset", "big"], "invalid choice: 'big'"),
        (["--head", "left"], "invalid choice: 'left'"),
    ],
)
def test_unknown_choices_are_refused_before_any_work(toy, tmp_path, args, needle):
    out = aver("train", "--cache", toy, "--out", str(tmp_path / "run"), *args)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
    assert "de3" in out.stderr or "paper" in out.stderr or "video" in out.stderr  # the choices are listed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["--set", "model.d_modle=64"], 2, ["d_modle", "did you mean 'd_model'"]),
        (["--set", "model.d_model=63"], 2, ["multiple of n_heads"]),
        (["--set", "lr=-1"], 2, ["lr must be > 0"]),
        (["--fold", "0"], 2, ["folds count from 1"]),
        (["--fold", "9"], 4, ["fold 9 does not exist"]),
        (["--device", "tpu"], 2, ["device must be cpu, cuda or cuda:N"]),
    ],
)
def test_bad_training_settings_are_one_line_and_leave_no_run_folder(toy, tmp_path, args, code, needles):
    out = aver("train", "--cache", toy, "--preset", "tiny", "--out", str(tmp_path / "run"), *args)
    one_line_error(out, code, *needles)
    assert not (tmp_path / "run").exists()


def test_missing_cache_and_missing_run_are_one_line(tmp_path):
    one_line_error(aver("info", str(tmp_path / "nope.zarr")), 4, "no cache at", "aver extract")
    out = aver("train", "--cache", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "run"))
    one_line_error(out, 4, "no cache at")
    assert not (tmp_path / "run").exists()
    one_line_error(
        aver("evaluate", "--run", str(tmp_path), "--cache", str(tmp_path / "x.zarr")), 5, "no checkpoint"
    )


def test_missing_extract_extra_names_the_pip_install(tmp_path):
    hide = "import sys; sys.modules['transformers'] = None"
    out = aver("extract", "--dataset", "synthetic", "--preset", "tiny", "--cache", str(tmp_path), pre=hide)
    one_line_error(out, 3, "pip install 'aver[extract]'", "transformers")
    assert not any(tmp_path.iterdir())


def test_info_reads_through_the_reader(toy):
    out = aver("info", toy)
    assert out.returncode == 0 and "clips:    20" in out.stdout and "done: 20" in out.stdout
    assert "storage:  " in out.stdout and " objects, " in out.stdout


def test_verbose_shows_the_traceback(tmp_path):
    out = aver("-v", "info", str(tmp_path / "nope.zarr"))
    assert out.returncode == 4 and "Traceback" in out.stderr and "aver: error:" in out.stderr


def test_tiny_preset_on_a_real_dataset_warns_loudly(tmp_path, caplog):
    from aver.errors import ConfigError
    from aver.extract.api import extract_dataset

    with caplog.at_level("WARNING"), pytest.raises(ConfigError, match="no 01-01"):
        extract_dataset("ravdess", data=tmp_path, cache=str(tmp_path / "caches"), preset="tiny")
    assert any("RANDOM models" in r.message and "ravdess" in r.message for r in caplog.records)


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved within its package)."""
    package = "aver." + ".".join(path.relative_to(ROOT).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            out.add(f"{base}.{node.module}" if base and node.module else base or node.module or "")
    return out


@pytest.mark.parametrize(("stage", "other"), [("extract", "aver.train"), ("train", "aver.extract")])
def test_the_two_stages_never_import_each_other(stage, other):
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m == other or m.startswith(other + "."))
        for p in (ROOT / stage).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_kernel_imports_neither_stage():
    for p in (ROOT / "aver").glob("*.py"):
        bad = [m for m in _imports(p) if m.startswith(("aver.extract", "aver.train"))]
        assert not bad or p.name == "__init__.py", (p, bad)


def test_no_library_function_over_60_lines():
    long = []
    for folder in ("aver", "extract", "train"):
        for p in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    if n > 60:
                        long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_make_variables_reach_the_flags_they_name():
    out = subprocess.run(
        ["make", "-n", "cv", "FOLDS=1,2", "VARIANT=none_ife", "CACHE=c"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    line = next(x for x in out.stdout.replace("\\\n", " ").splitlines() if " cv " in x)
    assert "--folds 1,2" in line and "--variant none_ife" in line and "--cache c/synthetic.zarr" in line
    out = subprocess.run(
        ["make", "-n", "extract", "FOLD_FILES=p_{fold}.csv", "DATASET=cremad"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "--fold-files 'p_{fold}.csv'" in out.stdout and "--preset paper" in out.stdout
    out = subprocess.run(
        ["make", "-n", "sweep", "TABLE=de3:2", "SEEDS=0-2", "SCHEDULER=tcp://h:8786", "CACHE=c"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    line = next(x for x in out.stdout.replace("\\\n", " ").splitlines() if " sweep " in x)
    assert "--table de3:2" in line and "--seeds 0-2" in line and "--scheduler tcp://h:8786" in line
    assert "--model" not in line and "--workers" not in line and "--cache c/synthetic.zarr" in line


EXTRAS = ("av", "cv2", "timm", "transformers", "facenet_pytorch", "dask", "skimage")


def test_trainer_only_install_trains_and_describes_a_cache(toy, tmp_path):
    """Without any [extract] module importable (dask included), `aver info`, `train`, `cv`,
    `evaluate` and `report` still work."""
    hide = "import sys\n" + "\n".join(f"sys.modules[{m!r}] = None" for m in EXTRAS)
    assert aver("info", toy, pre=hide).returncode == 0
    out = aver(
        "train", "--cache", toy, "--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "run"), pre=hide
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run/metrics.json").is_file()
    cv = [
        "cv",
        "--cache",
        toy,
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--folds",
        "1",
        "--out",
        str(tmp_path / "cv"),
    ]
    assert aver(*cv, pre=hide).returncode == 0
    assert aver("evaluate", "--run", str(tmp_path / "run"), "--cache", toy, pre=hide).returncode == 0
    assert aver("report", str(tmp_path), pre=hide).returncode == 0 and (tmp_path / "report.md").is_file()


def test_help_is_cheap():
    code = "import sys; from aver.cli import make_parser; make_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_an_empty_split_is_one_line(tmp_path):
    import numpy as np

    from aver.cache import FeatureCache
    from aver.store import CacheWriter

    url = build_feature_cache(str(tmp_path / "e.zarr"), n_clips=20)
    writer = CacheWriter(url)
    for i in np.flatnonzero(FeatureCache(url).folds[0] == 1):  # every validation clip of fold 1 failed
        writer.write_failure(int(i), "decode error")
    out = aver("train", "--cache", url, "--preset", "tiny", "--out", str(tmp_path / "run"))
    one_line_error(out, 4, "fold 1", "no extracted clips in ['validation']")
    assert not (tmp_path / "run").exists()
