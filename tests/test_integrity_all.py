"""Issue 18: a bit flip anywhere in any array of a store (features, clip table, coordinates,
digests, inputs) is named by ``aver cache verify`` and refused by training; deleted digest and
status chunks and damaged length chunks are named by clip, never passed over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aver.cache import FeatureCache
from aver.cli import main
from aver.errors import AverError, CacheError
from aver.store import CacheWriter
from aver.testing import add_toy_inputs, build_feature_cache
from aver.train.config import make_config
from aver.train.recipe import setup

EMOTIONS = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("all") / "base.zarr")
    build_feature_cache(
        url, n_clips=12, n_classes=4, class_names=EMOTIONS, n_speakers=4, d_image=16, d_audio=8
    )
    add_toy_inputs(url, crop_frames=4, crop_size=32, seconds=(0.5, 0.8))
    CacheWriter(url).write_failure(11, "decode error: a failed clip keeps its cause")
    return url


def _arrays(url: str) -> dict[str, list[Path]]:
    """Every array of the store (``name`` -> its chunk files on disk)."""
    out = {}
    for meta in sorted(Path(url).rglob("zarr.json")):
        if json.loads(meta.read_text()).get("node_type") != "array":
            continue
        folder = meta.parent
        chunks = (
            sorted(p for p in (folder / "c").rglob("*") if p.is_file()) if (folder / "c").exists() else []
        )
        if chunks:
            out[folder.relative_to(url).as_posix()] = chunks
    return out


def _copy(base: str, tmp_path: Path, name: str) -> str:
    url = str(tmp_path / (name.replace("/", "_") + ".zarr"))
    shutil.copytree(base, url)
    return url


def _verify(url: str, capsys) -> tuple[int, str]:
    try:
        code = main(["cache", "verify", url, "-q"])
    except SystemExit as e:  # argparse
        code = int(e.code)
    out = capsys.readouterr()
    return code, out.out + out.err


def _trains(url: str, system: str) -> None:
    cfg = make_config("tiny", [], cache=url, out="unused", system=system, epochs=1, progress=False)
    setup(cfg)


def test_every_array_of_the_store_is_covered(base):
    names = set(_arrays(base))
    for must in (
        "clips/label",
        "folds/split",
        "clips/speaker",
        "clips/id",
        "clips/status",
        "clips/digest",
        "clips/n_frames",
        "inputs/crops",
        "inputs/wave",
        "inputs/status",
        "inputs/digest",
        "clip",
    ):
        assert must in names, must


@pytest.mark.slow
def test_a_bit_flip_in_any_array_is_named_by_verify_and_refused_by_training(base, tmp_path, capsys):
    assert _verify(base, capsys)[0] == 0
    _trains(base, "de3")  # the clean store trains
    rng = np.random.default_rng(18)
    missed = []
    for name, chunks in _arrays(base).items():
        url = _copy(base, tmp_path, name)
        chunk = Path(url) / chunks[int(rng.integers(len(chunks)))].relative_to(base)
        data = bytearray(chunk.read_bytes())
        pos = int(rng.integers(len(data) // 4, max(len(data) // 4 + 1, 3 * len(data) // 4)))
        data[pos] ^= 1 << int(rng.integers(8))
        chunk.write_bytes(bytes(data))
        code, text = _verify(url, capsys)
        named = name in text or name.split("/")[0] in text or "(clip table)" in text
        if code == 0 or not named:
            missed.append(f"{name}: verify exit {code}: {text[-300:]}")
            continue
        system = "avtca" if name.startswith("inputs/") else "de3"
        try:
            _trains(url, system)
            missed.append(f"{name}: training did not refuse it ({text.splitlines()[0]})")
        except AverError:
            pass
    assert not missed, "\n".join(missed)


def _chunk(url: str, name: str, clip: int) -> Path:
    ndim = len(FeatureCache(url).group[name].shape)
    return Path(url) / name / "c" / str(clip) / Path(*["0"] * (ndim - 1))


@pytest.mark.parametrize(
    ("name", "clip", "words"),
    [
        ("clips/digest", 2, "digest record is gone"),  # a deleted digest chunk
        ("clips/status", 3, "reads pending"),  # a deleted status chunk: a done clip turned pending
        ("inputs/digest", 4, "digest record is gone"),
        ("inputs/status", 5, "reads pending"),
    ],
)
def test_deleted_record_and_status_chunks_are_named_and_refused(base, tmp_path, capsys, name, clip, words):
    url = _copy(base, tmp_path, name)
    _chunk(url, name, clip).unlink()
    code, text = _verify(url, capsys)
    ids = FeatureCache(base).ids
    assert code == 4 and f"clip {ids[clip]}: {name}: " in text and words in text, text
    with pytest.raises(CacheError, match="damaged cache"):
        _trains(url, "avtca" if name.startswith("inputs/") else "de3")


@pytest.mark.parametrize("name", ["clips/n_frames", "clips/n_audio", "clips/status"])
def test_an_undecodable_length_or_status_chunk_is_named_by_clip(base, tmp_path, capsys, name):
    url = _copy(base, tmp_path, name)
    _chunk(url, name, 6).write_bytes(b"\x00garbage")
    code, text = _verify(url, capsys)
    assert code == 4 and f"clip {FeatureCache(base).ids[6]}: {name}: chunk cannot be decoded" in text, text
    with pytest.raises(CacheError, match="damaged cache"):
        _trains(url, "de3")


def test_a_relabelled_clip_is_named_and_never_trains(base, tmp_path, capsys):
    import zarr

    url = _copy(base, tmp_path, "relabel")
    g = zarr.open_group(url, mode="r+")
    labels = g["clips/label"][:]
    labels[0] = (labels[0] + 1) % 4  # the truth of one clip changed silently
    g["clips/label"][:] = labels
    code, text = _verify(url, capsys)
    ids = FeatureCache(base).ids
    assert code == 4 and "clips/label" in text and f"clip {ids[0]}: clips/label" in text, text
    with pytest.raises(CacheError, match="clips/label"):
        _trains(url, "de3")
