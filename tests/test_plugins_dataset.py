"""Dataset plugins (entry-point group ``aver.datasets``): docs/adding-a-dataset.md's example runs.

The doc's first ```toml block (the plugin's whole pyproject.toml) and first ```python block (its
module) are written to a folder and installed for real, by pip through setuptools, into a target
folder of their own (``pip install --target``), which the subprocesses get on ``PYTHONPATH``.
Installing into the test venv would work as well, but other sessions run tests in that venv at the
same time and would see the plugin come and go; a target folder exercises the same build and the
same entry-point metadata, needs no uninstall, and takes about 1.5 s offline.

Broken plugins are written as installed distributions by hand (a ``.dist-info`` with METADATA and
``entry_points.txt`` next to the module): they need no build, only discovery.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adding-a-dataset.md"


def doc_block(lang: str) -> str:
    """The first fenced ```lang block of the doc."""
    m = re.search(rf"^```{lang}\n(.*?)^```\s*$", DOC.read_text(encoding="utf-8"), re.S | re.M)
    assert m, f"{DOC} has no ```{lang} block"
    return m.group(1)


@pytest.fixture(scope="module")
def doc_plugin() -> dict:
    """What the doc's pyproject.toml declares: distribution, the entry point and the module."""
    project = tomllib.loads(doc_block("toml"))
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    (name, value), *more = project["project"]["entry-points"]["aver.datasets"].items()
    assert not more, "the example declares one dataset"
    assert project["tool"]["setuptools"]["py-modules"] == [value]
    return {
        "dist": project["project"]["name"],
        "version": project["project"]["version"],
        "name": name,
        "module": value,
    }


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory, doc_plugin) -> Path:
    """The doc's package, built by setuptools and installed by pip into a folder of its own."""
    src = tmp_path_factory.mktemp("plugin_src") / doc_plugin["dist"]
    src.mkdir()
    (src / "pyproject.toml").write_text(doc_block("toml"), encoding="utf-8")
    (src / f"{doc_plugin['module']}.py").write_text(doc_block("python"), encoding="utf-8")
    site = tmp_path_factory.mktemp("plugin_site")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    pip += ["--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)]
    out = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(site.glob("*.dist-info/entry_points.txt")), sorted(p.name for p in site.iterdir())
    return site


def python_with(paths: list[Path], code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` (or ``-m aver ARGS`` when code is empty) with ``paths`` on PYTHONPATH."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-c", textwrap.dedent(code)] if code else [sys.executable, "-m", "aver", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def fake_dist(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """An installed distribution as importlib.metadata sees it: ``.dist-info`` + modules."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[aver.datasets]\n{lines}")
    for module, code in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(code))
    return site


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def layout_from(corpus: Path, dest: Path) -> dict[str, tuple[str, str]]:
    """The synthetic corpus's real clips copied into ``<speaker>/<emotion>/<clip>.mp4``;
    ``{expected clip id: (speaker, emotion)}``."""
    from aver.extract.datasets.ravdess import RAVDESS_EMOTIONS, parse_name

    expected = {}
    for video in sorted(corpus.rglob("*.mp4")):
        codes = parse_name(video.stem)
        speaker, emotion = f"spk{codes['actor']:02d}", RAVDESS_EMOTIONS[codes["emotion"]]
        take = f"take{codes['statement']}{codes['repetition']}"
        target = dest / speaker / emotion / f"{take}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, target)
        expected[f"{speaker}_{emotion}_{take}"] = (speaker, emotion)
    (dest / "README.txt").write_text("recorded in 2024; not a clip\n")
    return expected


def test_the_docs_two_blocks_are_a_complete_plugin(doc_plugin):
    assert doc_plugin["name"] == "mylab_corpus" and doc_plugin["module"] == "aver_mylab_corpus"
    module = doc_block("python")
    assert "@register_dataset(NAME)" in module and f'NAME = "{doc_plugin["name"]}"' in module
    compile(module, "aver_mylab_corpus.py", "exec")


def test_installed_plugin_is_listed_and_parses_its_layout(plugin_site, tmp_path):
    for rel in ["s1/happy/a.mp4", "s1/neutral/a.mp4", "s2/happy/b.mp4", "s3/Sad/c.mp4", "s3/sad/d.mp4"]:
        touch(tmp_path / "data" / rel)
    touch(tmp_path / "data" / "notes.txt")
    code = f"""
        from aver.extract.datasets import DATASETS, DatasetOptions, load_dataset
        from aver.layout import TEST, TRAIN, VALIDATION
        print(DATASETS.names())
        index = load_dataset("mylab_corpus", DatasetOptions(data={str(tmp_path / "data")!r}))
        for c in index.clips:
            print(c.clip_id, c.speaker, index.classes[c.label])
        print(index.folds_source, index.folds.shape, index.notes)
        speakers = [c.speaker for c in index.clips]
        for row in index.folds:
            sets = [{{s for s, code in zip(speakers, row) if code == k}} for k in (TRAIN, VALIDATION, TEST)]
            assert all(sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), row
        """
    out = python_with([plugin_site], code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(["cremad", "folder", "mspimprov", "ravdess", "synthetic", "mylab_corpus"])
    assert lines[1:6] == [
        "s1_happy_a s1 happy",
        "s1_neutral_a s1 neutral",
        "s2_happy_b s2 happy",
        "s3_sad_c s3 sad",
        "s3_sad_d s3 sad",
    ]
    assert lines[6].startswith("speaker-round-robin (3, 5)") and "notes.txt" in lines[6]
    assert "WARNING" not in out.stderr and "not loaded" not in out.stderr
    help_text = python_with([plugin_site], "", "extract", "--help")
    assert help_text.returncode == 0 and "mylab_corpus" in help_text.stdout, help_text.stderr


BAD_LAYOUTS = {
    "s1/happy/deeper/a.mp4": "not in the layout <speaker>/<emotion>/<clip>.mp4",
    "s1/cheerful/a.mp4": "folder 'cheerful' is not an emotion of this corpus",
    "s1/happy/a.mp4 emotions=joy": "--dataset-option emotions=joy: ['joy'] not in",
    "s1/happy/a.mp4 colour=red": "unknown --dataset-option ['colour']",
}


def test_the_plugins_errors_name_the_file_and_the_fix(plugin_site, tmp_path):
    """Each user-fixable problem is a ConfigError naming the file (or option); the command line
    shows it as one line, before any work."""
    cases = {}
    for k, (case, needle) in enumerate(BAD_LAYOUTS.items()):
        rel, _, option = case.partition(" ")
        for good in ["s1/happy/a.mp4", "s2/happy/a.mp4", "s3/happy/a.mp4"]:
            touch(tmp_path / str(k) / good)
        bad = touch(tmp_path / str(k) / rel)
        cases[str(tmp_path / str(k))] = (dict([option.split("=")]) if option else {}, needle, str(bad))
    code = f"""
        from aver.errors import ConfigError
        from aver.extract.datasets import DatasetOptions, load_dataset
        for data, (options, _, _) in {cases!r}.items():
            try:
                load_dataset("mylab_corpus", DatasetOptions(data=data, options=options))
            except ConfigError as e:
                print(str(e).replace("\\n", " "))
            else:
                print("no error")
        """
    out = python_with([plugin_site], code)
    assert out.returncode == 0, out.stderr
    for line, (options, needle, bad) in zip(out.stdout.splitlines(), cases.values(), strict=True):
        assert needle in line, line
        assert options or line.startswith(bad), line  # a layout problem names the file first

    data = next(iter(cases))
    out = python_with([plugin_site], "", "extract", "--dataset", "mylab_corpus", "--data", data)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("aver: error:"), out.stderr
    assert cases[data][2] in lines[0] and cases[data][1] in lines[0]


@pytest.mark.slow
def test_aver_extract_runs_the_docs_plugin_end_to_end(plugin_site, small_corpus, tmp_path):
    """The doc's package, installed, extracts real H.264 + AAC clips through `aver extract`."""
    from aver.layout import open_root

    data = tmp_path / "mylab"
    expected = layout_from(small_corpus, data)
    args = ["extract", "--dataset", "mylab_corpus", "--data", str(data), "--cache", str(tmp_path / "cache")]
    args += ["--preset", "tiny", "-q", "--set", "runtime.group_frames=30", "--set", "runtime.image_batch=16"]
    out = python_with([plugin_site], "", *args)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "not loaded" not in out.stderr

    g = open_root(str(tmp_path / "cache" / "mylab_corpus.zarr"), "r")
    meta = g.attrs["aver"]
    assert meta["dataset"] == "mylab_corpus" and meta["folds_source"] == "speaker-round-robin"
    assert meta["classes"] == ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert meta["label_source"] == "folder name" and any("README.txt" in n for n in meta["notes"])
    ids = [str(i) for i in g["clips/id"][:]]
    assert sorted(ids) == sorted(expected)
    speakers = [str(s) for s in g["clips/speaker"][:]]
    labels = [meta["classes"][k] for k in g["clips/label"][:]]
    assert {i: (s, e) for i, s, e in zip(ids, speakers, labels, strict=True)} == expected
    assert (g["clips/status"][:] == 1).all(), list(g["clips/error"][:])
    assert g["folds/split"].shape == (3, len(ids))  # 3 speakers: 3 speaker-independent folds
    assert np.all(g["clips/n_frames"][:] > 0)


BROKEN = {
    # distribution: (entry points, modules, what its one warning line must say)
    "lab-raises": (
        {"lab_raises": "aver_lab_raises"},
        {"aver_lab_raises": "raise RuntimeError('lab server unreachable')\n"},
        "RuntimeError: lab server unreachable (at ",
    ),
    "lab-missing-dep": (
        {"lab_missing": "aver_lab_missing"},
        {"aver_lab_missing": "import numpy_that_is_not_installed\n"},
        "ModuleNotFoundError: No module named 'numpy_that_is_not_installed' (at ",
    ),
    "lab-misnamed": (
        {"lab_misnamed": "aver_lab_misnamed"},
        {
            "aver_lab_misnamed": """
                from aver.extract.datasets import register_dataset

                @register_dataset("lab_other_name")
                def adapter(opts):
                    raise AssertionError("never called")
                """
        },
        "registered no dataset named 'lab_misnamed' (it registered ['lab_other_name'])",
    ),
    "lab-clash": (
        {"ravdess": "aver_lab_clash"},
        {"aver_lab_clash": "raise AssertionError('a clashing plugin is never imported')\n"},
        "its name 'ravdess' is a built-in dataset; the built-in is kept",
    ),
    "lab-sneaky": (
        {"lab_sneaky": "aver_lab_sneaky"},
        {
            "aver_lab_sneaky": """
                from aver.extract.datasets import register_dataset

                @register_dataset("lab_sneaky")
                def mine(opts):
                    raise AssertionError("never called")

                @register_dataset("cremad")
                def theirs(opts):
                    raise AssertionError("never called")
                """
        },
        "'cremad' is already registered",
    ),
}


def test_a_plugin_that_raises_at_import_is_one_warning_line(tmp_path):
    entry_points, modules, cause = BROKEN["lab-raises"]
    site = fake_dist(tmp_path / "site", "lab-raises", entry_points, modules)
    out = python_with([site], "", "extract", "--help")
    assert out.returncode == 0 and "synthetic" in out.stdout and "lab_raises" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "'lab_raises'" in lines[0] and "distribution lab-raises 0.1" in lines[0] and cause in lines[0]
    assert lines[0].endswith(f"{site / 'aver_lab_raises.py'}:1)")  # where, in the plugin's own code
    # lazily: neither `aver --help` nor importing the registry runs a plugin
    for out in (python_with([site], "", "--help"), python_with([site], "import aver.extract.datasets")):
        assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "Traceback" not in out.stderr


def test_broken_plugins_leave_builtins_and_good_plugins_working(plugin_site, tmp_path):
    site = tmp_path / "site"
    for dist, (entry_points, modules, _) in BROKEN.items():
        fake_dist(site, dist, entry_points, modules)
    for rel in ["Actor_01/01-01-01-01-01-01-01.mp4", "Actor_02/01-01-03-01-01-01-02.mp4"]:
        touch(tmp_path / "ravdess" / rel)
    for rel in ["s1/happy/a.mp4", "s2/sad/a.mp4", "s3/neutral/a.mp4"]:
        touch(tmp_path / "mylab" / rel)
    code = f"""
        import logging
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        from aver.extract.datasets import DATASETS, DatasetOptions, load_dataset
        print(DATASETS.names())
        print(DATASETS.get("ravdess").__module__, DATASETS.get("cremad").__module__)
        print(len(load_dataset("ravdess", DatasetOptions(data={str(tmp_path / "ravdess")!r})).clips))
        print(len(load_dataset("mylab_corpus", DatasetOptions(data={str(tmp_path / "mylab")!r})).clips))
        print(DATASETS.load_plugins())  # loaded once: no second round of warnings
        """
    out = python_with([site, plugin_site], code)
    assert out.returncode == 0, out.stderr
    names, modules, n_ravdess, n_mylab, loaded = out.stdout.splitlines()
    assert names == str(["cremad", "folder", "mspimprov", "ravdess", "synthetic", "mylab_corpus"])
    assert modules == "aver.extract.datasets.ravdess aver.extract.datasets.cremad"
    assert (n_ravdess, n_mylab, loaded) == ("2", "3", "['mylab_corpus']")
    warnings = out.stderr.strip().splitlines()
    assert len(warnings) == len(BROKEN), out.stderr
    for dist, (entry_points, _, cause) in BROKEN.items():
        (name,) = entry_points
        (line,) = [w for w in warnings if f"distribution {dist} 0.1" in w]
        assert line.startswith("WARNING aver.plugins: aver: plugin") and f"'{name}'" in line and cause in line
    (sneaky,) = [w for w in warnings if "lab-sneaky" in w]
    assert sneaky.endswith(f"{site / 'aver_lab_sneaky.py'}:8)")  # the clashing decorator, not aver's code


def test_load_entry_points_is_generic_once_and_takes_objects(tmp_path, monkeypatch):
    """Another group and registry (as ``aver.systems`` will use it): ``module:object`` entry points
    are added under their name, ``check`` vets them, and a second call loads nothing again."""
    from aver.plugins import load_entry_points
    from aver.registry import Registry

    site = tmp_path / "site"
    info = site / "lab_systems-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-systems\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[aver.test_group]\ngood = aver_lab_systems_x:GOOD\nbad = aver_lab_systems_x:BAD\n"
        "absent = aver_lab_systems_x:ABSENT\n"
    )
    (site / "aver_lab_systems_x.py").write_text(
        "IMPORTS = []\nIMPORTS.append(1)\nGOOD = 'a system'\nBAD = 42\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "aver_lab_systems_x", raising=False)
    registry = Registry("model")
    registry.add("de3", "built in")

    def check(name, obj):
        if not isinstance(obj, str):
            raise TypeError(f"model {name!r} is a {type(obj).__name__}, not a System")

    records = []
    monkeypatch.setattr("aver.plugins.log.warning", lambda msg, *a: records.append(msg % a))
    assert load_entry_points("aver.test_group", registry, check=check) == ["good"]
    assert registry.names() == ["de3", "good"] and registry.get("good") == "a system"
    assert len(records) == 2
    assert any("'bad'" in r and "TypeError: model 'bad' is a int, not a System" in r for r in records)
    assert any("'absent'" in r and "AttributeError" in r for r in records)
    assert load_entry_points("aver.test_group", registry, check=check) == ["good"]
    assert len(records) == 2 and sys.modules["aver_lab_systems_x"].IMPORTS == [1]
    sys.modules.pop("aver_lab_systems_x", None)
