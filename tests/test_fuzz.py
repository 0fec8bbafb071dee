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
