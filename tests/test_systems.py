"""The one system contract (``aver.train.system``): every registered system, built-in or plugin,
trains, saves, restores and predicts through the same ``build``; the model plugin of
``docs/adding-a-model.md`` installs and trains; no built-in system is named outside its module."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aver.testing import add_toy_inputs, build_feature_cache
from aver.train import evaluate_run, train_fold
from aver.train.config import make_config
from aver.train.system import FEATURES, INPUTS, System
from aver.train.systems import SYSTEMS

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ["neutral", "happy", "sad", "angry"]
BUILTIN = ("de3", "mocanu2023", "avtca")


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("systems") / "toy.zarr")
    build_feature_cache(url, n_clips=32, n_classes=4, class_names=EMOTIONS, n_speakers=6)
    return add_toy_inputs(url)


def test_the_builtin_systems_register_through_entry_points():
    assert set(BUILTIN) <= set(SYSTEMS.names())
    assert SYSTEMS.default_name() == "de3"
    for name in SYSTEMS.names():
        system = SYSTEMS.get(name)
        assert isinstance(system, System) and system.name == name
        assert system.trains_on in (FEATURES, INPUTS)
        assert {"paper", "tiny"} <= set(system.presets.names()), name
        assert system.default_variant in system.variants
        for variant in system.variants:
            assert system.variants.get(variant).cites, f"{name}:{variant} cites no paper table/row"


@pytest.mark.slow
@pytest.mark.parametrize("name", SYSTEMS.names())
def test_every_system_trains_saves_restores_and_predicts_through_one_build(toy_cache, tmp_path, name):
    from aver.train.inference import clips_for, forward, load_run

    out = tmp_path / name
    cfg = make_config("tiny", [], cache=toy_cache, out=str(out), system=name, epochs=1, progress=False)
    m = train_fold(cfg)
    assert m["system"] == name and np.isfinite(m["test_reported"]["accuracy"])
    info = json.loads((out / "config.json").read_text())
    assert info["system"] == name and info["init"]
    # restore: the same build, from the checkpoint alone; the test clips' predictions come back
    again = evaluate_run(out, toy_cache)
    assert again["test"][m["reported_head"]]["accuracy"] == pytest.approx(m["test_reported"]["accuracy"])
    run = load_run(out)
    from aver.cache import FeatureCache

    cache = FeatureCache(toy_cache)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    index = {str(c): i for i, c in enumerate(cache.ids)}
    ids = np.array([index[r["clip_id"]] for r in rows])
    probs = forward(run, clips_for(run, cache, ids), "cpu")[run.head]
    predicted = [run.names[int(k)] for k in probs.argmax(1)]
    assert predicted == [r["prediction"] for r in rows]


def test_a_variant_of_every_system_builds_from_its_config_and_restores(toy_cache):
    from aver.cache import FeatureCache
    from aver.train.system import DataSpec

    cache = FeatureCache(toy_cache)
    data = DataSpec(tuple(EMOTIONS), "classification", cache.dims)
    for name in SYSTEMS.names():
        system = SYSTEMS.get(name)
        config = system.make_config("tiny", system.default_variant, {}, data)
        model = system.build(config, EMOTIONS)
        info = {"system": name, "model_config": system.config_dict(config), "names": EMOTIONS}
        again = system.restore(info)
        assert type(again) is type(model)
        assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())


def _literals(path: Path) -> list[tuple[int, str, bool]]:
    """(line, value, is an argparse/option ``default=``) of every string constant in ``path``."""
    tree = ast.parse(path.read_text())
    defaults = {
        id(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords
        if kw.arg == "default"
    }  # fmt: skip
    return [
        (n.lineno, n.value, id(n) in defaults)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_no_builtin_system_is_named_outside_its_module():
    own = {
        "de3": {"train/models/variants.py", "train/models/de3.py"},
        "mocanu2023": {"train/models/mocanu2023.py"},
        "avtca": {"train/models/avtca.py", "train/models/avtca_video.py"},
    }
    cli = {"aver/cli/train.py", "aver/cli/demo.py", "bench/train.py"}  # the CLI default may name it
    found = []
    for folder in ("aver", "extract", "train", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, value, is_default in _literals(path):
                if value in own and rel not in own[value] and not (is_default and rel in cli):
                    found.append(f"{rel}:{line}: {value!r}")
    assert not found, "system names outside their modules:\n" + "\n".join(found)


def test_a_broken_system_plugin_is_named_in_one_line_and_the_others_work(tmp_path):
    site = tmp_path / "site"
    dist = site / "aver_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aver-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[aver.systems]\nbroken = aver_broken\nde3 = aver_broken\n")
    (site / "aver_broken.py").write_text("raise RuntimeError('this plugin is broken')\n")
    code = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
        "from aver.train.systems import SYSTEMS\n"
        "print(sorted(SYSTEMS.names()))\n"
    )
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(BUILTIN) <= set(eval(proc.stdout.strip()))  # noqa: S307 - our own printed list
    lines = [x for x in proc.stderr.splitlines() if "plugin" in x]
    assert any("'broken'" in x and "this plugin is broken" in x for x in lines), proc.stderr
    assert any("'de3'" in x and "aver-broken" in x for x in lines), proc.stderr  # a clash keeps the built-in
    assert "Traceback" not in proc.stderr


def _doc_blocks(doc: Path) -> tuple[str, str]:
    text = doc.read_text()

    def first(lang: str) -> str:
        start = text.index(f"```{lang}\n") + len(f"```{lang}\n")
        return text[start : text.index("```", start)]

    return first("toml"), first("python")


@pytest.mark.slow
def test_the_documented_model_plugin_installs_and_trains(tmp_path):
    """docs/adding-a-model.md: its first toml block and first python block, installed as a package,
    train with ``aver train --model <its name>`` on the demo cache."""
    import tomllib

    toml, module = _doc_blocks(ROOT / "docs" / "adding-a-model.md")
    meta = tomllib.loads(toml)
    ((name, target),) = meta["project"]["entry-points"]["aver.systems"].items()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(toml)
    (pkg / f"{target}.py").write_text(module)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(pkg)], check=True, capture_output=True)
    cache = str(tmp_path / "toy.zarr")
    build_feature_cache(cache, n_clips=32, n_classes=4, class_names=EMOTIONS, n_speakers=6)
    env = {
        "PYTHONPATH": str(site),
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
        "AVER_HOME": str(tmp_path),
    }
    aver = [str(Path(sys.executable).parent / "aver")]
    listed = subprocess.run([*aver, "variants", "--model", name], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and name in listed.stdout, listed.stderr
    out = tmp_path / "run"
    args = ["train", "--cache", cache, "--model", name, "--preset", "tiny", "--out", str(out), "-q"]
    proc = subprocess.run([*aver, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["system"] == name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["system"] == name and metrics["validation"]["fusion"]["accuracy"] > 0.5  # chance 0.25


def test_every_stored_paper_row_maps_to_an_existing_variant_and_protocol():
    from aver.folds import PROTOCOLS
    from aver.train.heads import HEADS
    from aver.train.paper import paper_rows, stored_rows

    rows = stored_rows()
    assert {r["system"] for r in rows} == set(BUILTIN)
    for row in rows:
        system = SYSTEMS.get(row["system"])
        assert row["variant"] in system.variants, row
        assert row["protocol"] in PROTOCOLS and row["head"] in HEADS, row
        assert all(isinstance(v, str) and float(v) > 0 for v in row["metrics"].values()), row
    assert paper_rows() == [r for name in SYSTEMS.names() for r in rows if r["system"] == name]
    tables = {r["table"] for r in rows if r["system"] == "mocanu2023"}
    for row in ("AT", "VS", "VS + VC", "VS + VC + VT"):  # every row of Tables 1-2
        assert f"Mocanu 2023 Table 1 ({row})" in tables and f"Mocanu 2023 Table 2 ({row})" in tables
    assert any("Table 9 (CT-1)" in r["table"] and r["metrics"]["accuracy"] == "76.0" for r in rows)
    assert any(r["metrics"].get("accuracy") == "78.50" for r in rows)  # as the paper prints it


def _run_folder(root: Path, system: str, variant: str, protocol: str, dataset: str = "ravdess") -> None:
    root.mkdir(parents=True)
    metrics = {
        "test": {"fusion": {"accuracy": 0.5}},
        "test_reported": {"accuracy": 0.5},
        "reported_head": "fusion",
    }
    info = {
        "system": system,
        "variant": variant,
        "protocol": protocol,
        "init": "random",
        "cache": {"dataset": dataset, "folds_source": "speaker-round-robin"},
        "train_config": {},
    }
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "config.json").write_text(json.dumps(info))


def test_report_never_pairs_a_paper_row_across_protocols(tmp_path):
    from aver.train.paper import render

    _run_folder(tmp_path / "a", "mocanu2023", "full", "cache")
    text = render(tmp_path)
    assert "| mocanu2023:full | fusion | accuracy | 50.0 (n=1) | 89.25 |" not in text
    assert "| mocanu2023:full | fusion | accuracy | not paired | 89.25 |" in text
    assert "--protocol mocanu2023-10fold" in text
    _run_folder(tmp_path / "b", "mocanu2023", "full", "mocanu2023-10fold")
    text = render(tmp_path)
    assert "| mocanu2023:full | fusion | accuracy | 50.0 (n=1) | 89.25 | Mocanu 2023 Table 3" in text
    # a paired row names the backbone initialisation the paper used and the flags for it
    assert "backbones: ours random, paper pretrained" in text and "model.video_weights" in text


def test_variants_lists_every_system_with_presets_and_citations_and_survives_a_closed_pipe():
    aver = str(Path(sys.executable).parent / "aver")
    proc = subprocess.run(f"{aver} variants | head -2", shell=True, capture_output=True, text=True)
    assert proc.stdout.count("\n") == 2 and "Traceback" not in proc.stderr and not proc.stderr.strip()
    full = subprocess.run([aver, "variants"], capture_output=True, text=True, check=True).stdout
    for name in SYSTEMS.names():
        assert f"{name}: " in full
    assert "preset paper" in full and "[Tables 1-2, AT]" in full and "[Tables 8-9, CT-1]" in full
