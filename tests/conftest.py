"""Session fixtures: an isolated AVER_HOME, tiny models, and a small real synthetic corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# 3 actors x 2 emotions x 1 clip of 0.8 s: real H.264 + AAC files, small enough to extract often.
SMALL_CORPUS = {"n_actors": 3, "emotions": ["neutral", "happy"], "clips_per_emotion": 1, "seconds": 0.8}


@pytest.fixture(scope="session", autouse=True)
def aver_home(tmp_path_factory):
    """Tiny models are materialised here, never in the user's ~/.cache."""
    home = tmp_path_factory.mktemp("aver_home")
    old = os.environ.get("AVER_HOME")
    os.environ["AVER_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("AVER_HOME", None)
    else:
        os.environ["AVER_HOME"] = old


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    from aver.extract.datasets import DatasetOptions, load_dataset

    root = tmp_path_factory.mktemp("synthetic")
    load_dataset("synthetic", DatasetOptions(data=root, options=SMALL_CORPUS))
    return root


def small_index(root: Path, **kw):
    from aver.extract.datasets import DatasetOptions, load_dataset

    return load_dataset("synthetic", DatasetOptions(data=root, options=SMALL_CORPUS, **kw))


@pytest.fixture(scope="session")
def tiny_config():
    from aver.extract.presets import preset_config
    from aver.overrides import apply_overrides

    # small groups so clips commit one by one (exercises the group packing boundaries too)
    return apply_overrides(
        preset_config("tiny", "synthetic"), ["runtime.group_frames=30", "runtime.image_batch=16"]
    )


@pytest.fixture(scope="session")
def extracted_store(small_corpus, tiny_config, tmp_path_factory) -> str:
    """The small corpus extracted once, uninterrupted: the reference for many tests."""
    from aver.extract.pipeline import run_extraction

    url = str(tmp_path_factory.mktemp("cache") / "synthetic.zarr")
    summary = run_extraction(tiny_config, small_index(small_corpus), url, progress=False)
    assert summary.failed == 0, summary.report()
    return url


@pytest.fixture
def s3_endpoint():
    """A local moto S3 server with the bucket ``aver-caches``; yields fsspec storage options."""
    for module in ("moto.server", "s3fs", "boto3"):
        pytest.importorskip(module)
    from aver.testing import local_s3

    with local_s3("aver-caches") as opts:
        yield opts
