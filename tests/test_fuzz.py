"""Fuzz: crafted caches and crafted clip tables end in one clear error or a correct result.

Never a traceback, never a write outside the output folder, never memory beyond a stated bound
(``MEMORY_BOUND_GIB`` over the test process's peak before the case). Each case is seeded and
named, so a failure is reproducible with ``-k``.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest

from aver.cli import main
from aver.testing import build_feature_cache

MEMORY_BOUND_GIB = 1.5
ARRAYS = [
    "clips/id", "clips/speaker", "clips/label", "clips/status", "clips/n_frames", "clips/n_flow",
    "clips/n_audio", "frames/features", "flow/features", "audio/features", "folds/split", "clips/error",
]  # fmt: skip
NASTY = [
    "\x1b[2J\x1b]0;pwned\x07",
    "../../etc/passwd",
    "/abs/path",
    '=HYPERLINK("x")',
    "$\\frac{a}{b}$",
    "\u202e",
    "",
]


def _mutate_array(root: Path, rng: random.Random) -> str:
    name = rng.choice(ARRAYS)
    meta_path = root / name / "zarr.json"
    meta = json.loads(meta_path.read_text())
    kind = rng.choice(["shape", "dtype", "fill", "codec", "chunks", "garbage_json", "chunk_bytes", "delete"])
    if kind == "shape":
        meta["shape"] = [rng.choice([0, 1, 7, 2**31, 2**40]) for _ in meta["shape"]]
    elif kind == "dtype":
        meta["data_type"] = rng.choice(["float64", "int64", "bool", "string", "complex128", "nonsense"])
    elif kind == "fill":
        meta["fill_value"] = rng.choice(["NaN", "x", None, 1e308, [1, 2]])
    elif kind == "codec":
        meta["codecs"] = [
            {"name": rng.choice(["pickle", "numcodecs.pickle", "gzip", "bytes"]), "configuration": {}}
        ]
    elif kind == "chunks":
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [
            rng.choice([0, 1, 2**31]) for _ in meta["shape"]
        ]
    elif kind == "garbage_json":
        meta_path.write_bytes(b'{"shape": [1,')
        return f"{name}:{kind}"
    elif kind == "chunk_bytes":
        for chunk in (root / name).rglob("c/*"):
            if chunk.is_file():
                chunk.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 64]))))
        return f"{name}:{kind}"
    else:
        shutil.rmtree(root / name)
        return f"{name}:{kind}"
    meta_path.write_text(json.dumps(meta))
    return f"{name}:{kind}"


def _mutate_attrs(root: Path, rng: random.Random) -> str:
    path = root / "zarr.json"
    meta = json.loads(path.read_text())
    aver = meta["attributes"]["aver"]
    key = rng.choice(
        ["dims", "capacity", "classes", "targets", "layout_version", "dataset", "folds_source", "models"]
    )
    aver[key] = rng.choice([None, "x", -1, 2**40, [], {}, NASTY[0], {"image": "12", "audio": None}])
    path.write_text(json.dumps(meta))
    return f"attrs.{key}={aver[key]!r}"


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "base.zarr"
    build_feature_cache(str(root), n_clips=15, n_classes=3, dataset="toy" + NASTY[0])
    return root


@pytest.mark.parametrize("seed", range(80))
def test_crafted_caches(pristine, tmp_path, seed, capsys):
    rng = random.Random(seed)
    work = tmp_path / "box"
    root = work / "c.zarr"
    shutil.copytree(pristine, root)
    what = [
        (_mutate_attrs if rng.random() < 0.3 else _mutate_array)(root, rng) for _ in range(rng.choice([1, 2]))
    ]
    before = set(p for p in tmp_path.parent.iterdir())
    peak = _peak_gib()
    for argv in (
        ["info", str(root)],
        ["train", "--cache", str(root), "--preset", "tiny", "--epochs", "1", "--out", str(work / "run")],
    ):
        code = main(argv)  # an exception escaping here is a traceback: the test fails with it
        out, err = capsys.readouterr()
        assert code in (0, 4, 2), (what, argv[0], code, err)
        if code:
            lines = err.strip().splitlines()
            assert lines[-1].startswith("aver: error:") and "\x1b" not in lines[-1], (what, err)
        assert "\x1b" not in out, (what, out)
    assert _peak_gib() - peak < MEMORY_BOUND_GIB, what
    assert set(p for p in tmp_path.parent.iterdir()) == before  # nothing written beside the case


def _clip_table(rng: random.Random, videos: Path) -> bytes:
    header = ["video", "speaker", "label", "valence", "id", "audio"]
    rng.shuffle(header)
    header = header[: rng.randint(1, len(header))]
    lines = [",".join(header)]
    for k in range(rng.randint(0, 6)):
        cells = []
        for _ in header:
            value = rng.choice([f"v{k}.mp4", f"s{k % 3}", "happy", str(rng.random()), "nan", "", *NASTY])
            cells.append(value.replace(",", ";"))
        lines.append(",".join(cells[: rng.randint(0, len(cells))]))
    text = "\n".join(lines) + "\n"
    return text.encode("latin-1", "replace") if rng.random() < 0.15 else text.encode()


@pytest.mark.parametrize("seed", range(80))
def test_crafted_clip_tables(tmp_path, seed):
    from aver.errors import ConfigError
    from aver.extract.datasets import DatasetOptions, load_dataset

    rng = random.Random(seed)
    (tmp_path / "clips.csv").write_bytes(_clip_table(rng, tmp_path))
    targets = ("valence",) if rng.random() < 0.5 else ()
    try:
        index = load_dataset("folder", DatasetOptions(labels=tmp_path / "clips.csv", targets=targets))
    except ConfigError as e:
        assert "\n" not in str(e) or "clips.csv" in str(e)
        return
    assert index.clips and np.isfinite(np.array([c.targets for c in index.clips], dtype=float)).all()
    assert len({c.clip_id for c in index.clips}) == len(index.clips)


# -- hostile text from ids, file names and class names, through every command that prints or writes --
# Each reaches a terminal, a CSV, a Markdown or an HTML page only through aver.utils' sanitisers.
HOSTILE = [
    "\x1b]8;;https:evil.example\x07click\x1b]8;;\x07",  # OSC 8 hyperlink (no '/': also a file name)
    "\x1b[2J\x1b[H",  # clear the screen
    '=HYPERLINK("https:evil","x")',
    "+cmd|' -C calc'!A0",
    "@SUM(1+1)",
    "a|b",
    "new\nline",
    "\u202eevil\u202c\u2066iso\u2069",  # bidi override and isolate
    "$\\foo{$",
]
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_one_set_of_sanitisers():
    """``aver.utils`` is where text is made inert; no other module escapes on its own."""
    from aver.utils import for_csv, for_html, for_markdown, for_plot, for_terminal

    assert for_terminal("a\x1b[2Jb\n\u202e\x9b\x7f\u2066") == "a\\x1b[2Jb\\n\\u202e\\x9b\\x7f\\u2066"
    assert for_terminal("Émotion – ok") == "Émotion – ok"
    for cell in ('=HYPERLINK("x")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3"):
        assert for_csv(cell) == "'" + cell
    assert for_csv("\tx") == "'\\tx" and for_csv("\r=1") == "'\\r=1" and for_csv("a=b") == "a=b"
    assert for_markdown("a|b<i>\n") == "a\\|b&lt;i&gt;\\n"
    assert for_html('<a href="x">\x1b') == "&lt;a href=&quot;x&quot;&gt;\\x1b"
    assert for_plot("$x$") == "\\$x\\$"
    root = Path(__file__).resolve().parents[1]
    for folder in ("aver", "extract", "train"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            if path != root / "aver" / "utils.py":
                assert "html.escape(" not in text and "unicode_escape" not in text, path


def assert_inert(text: str, where: str, allow: str = "\n") -> None:
    """No control character (C0 but ``allow``, DEL, C1) and no bidi control in ``text``."""
    bad = [c for c in text if (ord(c) < 32 and c not in allow) or 0x7F <= ord(c) <= 0x9F]
    bad += [c for c in text if c in BIDI]
    assert not bad, (where, sorted(set(bad)), text[:2000])


def assert_csv_inert(path: Path) -> None:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    width = len(rows[0])
    for row in rows:
        assert len(row) == width, (path, row)
        for cell in row:
            assert_inert(cell, str(path), allow="")
            try:
                float(cell)  # a number (a negative value starts with '-') is data, not a formula
            except ValueError:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (path, cell)


def assert_markdown_inert(path: Path) -> None:
    import re

    text = path.read_text()
    assert_inert(text, str(path))
    pipes = None
    for line in text.splitlines():
        if not line.startswith("|"):
            pipes = None
            continue
        n = len(re.findall(r"(?<!\\)\|", line))  # an escaped pipe does not end a cell
        pipes = pipes or n
        assert n == pipes, (path, line)
    assert "<" not in re.sub(r"<br>", "", text), path


def assert_html_inert(path: Path) -> None:
    text = path.read_text()
    assert_inert(text, str(path))
    for h in HOSTILE:
        if any(c in h for c in '<>"\x1b\u202e\n'):
            assert h not in text, (path, h)


@pytest.fixture(scope="module")
def hostile_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "h.zarr"
    build_feature_cache(
        str(root), n_clips=15, n_classes=3, dataset="ds" + HOSTILE[0] + "|\n",
        class_names=[HOSTILE[2], HOSTILE[5] + HOSTILE[6] + HOSTILE[7], HOSTILE[8]], id_prefix=HOSTILE[4] + HOSTILE[1],
    )  # fmt: skip
    return root


def test_hostile_ids_and_class_names_through_every_writer(hostile_cache, tmp_path, capsys):
    runs = tmp_path / "runs"
    common = ["--cache", str(hostile_cache), "--preset", "tiny", "--epochs", "1", "-q"]
    for argv in (
        ["info", str(hostile_cache)],
        ["train", *common, "--out", str(runs / "r1")],
        ["cv", *common, "--folds", "1,2", "--out", str(runs / "cv")],
        ["evaluate", "--run", str(runs / "r1"), "--cache", str(hostile_cache)],
        ["report", str(runs)],
        ["qa", str(hostile_cache), "--out", str(tmp_path / "qa" / "page.html"), "-q"],
    ):
        assert main(argv) == 0, argv
        out, err = capsys.readouterr()
        assert_inert(out, argv[0])
        assert_inert(err, argv[0], allow="\n\r")  # \r: progress bars
    for csv_file in (
        runs / "r1/predictions.csv",
        runs / "cv/cv_summary.csv",
        tmp_path / "qa/page_files/clips.csv",
    ):
        assert_csv_inert(csv_file)
    for md in (runs / "report.md", runs / "cv/cv_summary.md"):
        assert_markdown_inert(md)
    assert_inert((runs / "r1" / "train.log").read_text(), "train.log", allow="\n")
    for page in (runs / "report.html", tmp_path / "qa/page.html"):
        assert_html_inert(page)


def test_hostile_file_names_through_extract(small_corpus, tmp_path, capsys):
    """Clips named by their files (not videos, so they fail fast) and one real clip under a hostile
    name: the FAILED lines, the log and ``aver info`` show every control character escaped."""
    import csv

    data = tmp_path / "data"
    data.mkdir()
    names = [h.replace("\n", "\\n") if k % 2 else h for k, h in enumerate(HOSTILE)]  # raw newline too
    for name in names:
        (data / f"{name}.mp4").write_text("not a video")
    shutil.copy(sorted(small_corpus.rglob("*.mp4"))[0], data / f"{HOSTILE[0]}ok.mp4")
    with open(tmp_path / "clips.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "speaker", "label"])
        w.writerows(
            [f"{n}.mp4", f"s{k % 3}", HOSTILE[k % 3 + 2]] for k, n in enumerate([*names, HOSTILE[0] + "ok"])
        )
    store = tmp_path / "c" / "folder.zarr"
    argv = ["extract", "--dataset", "folder", "--labels", str(tmp_path / "clips.csv"), "--data", str(data)]
    assert main([*argv, "--preset", "tiny", "--store", str(store), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.count("FAILED") == len(names), out
    assert_inert(out, "extract")
    assert_inert(err, "extract", allow="\n\r")
    assert main(["info", str(store)]) == 0
    assert_inert(capsys.readouterr().out, "info")
