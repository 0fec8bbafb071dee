"""The library API from a notebook: ``aver.open_cache``, ``FeatureCache.table``, ``cache.dataset``
(``aver.dataset.CacheDataset``) with a ``DataLoader``, and docs/api.md, every python block of which
runs here in order, in one namespace, on a small cache built at the path the page names.

A notebook session also keeps its own matplotlib backend and rcParams through a training run.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import aver
from aver import layout as L
from aver.cache import FeatureCache, open_cache
from aver.dataset import CacheDataset
from aver.errors import CacheError, ConfigError, MissingExtraError
from aver.testing import add_toy_inputs, build_feature_cache

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"
CLASSES = ["neutral", "happy", "angry"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    """24 clips, 3 classes, 5 speaker folds; clip c003 failed in extraction."""
    from aver.store import CacheWriter

    url = build_feature_cache(
        str(tmp_path_factory.mktemp("toy") / "toy.zarr"), n_clips=24, class_names=CLASSES
    )
    CacheWriter(url).write_failure(3, "decode: broken file")
    return url


@pytest.fixture(scope="module")
def with_inputs(tmp_path_factory) -> str:
    url = build_feature_cache(
        str(tmp_path_factory.mktemp("inputs") / "e2e.zarr"), n_clips=12, soft_labels=True
    )
    return add_toy_inputs(url, crop_frames=4, crop_size=16)


# -- the clip table ----------------------------------------------------------------------------
def test_open_cache_is_the_reader_and_expands_home(toy, monkeypatch):
    monkeypatch.setenv("HOME", str(Path(toy).parent))
    cache = aver.open_cache("~/toy.zarr")
    assert aver.open_cache is open_cache and isinstance(cache, FeatureCache)
    assert cache.url == toy and cache.storage_options is None
    assert aver.CacheDataset is CacheDataset
    with pytest.raises(CacheError, match="no cache at .*nowhere.zarr"):
        aver.open_cache(Path(toy).parent / "nowhere.zarr")


def test_the_table_is_the_clip_table_one_row_per_clip(toy):
    cache = open_cache(toy)
    t = cache.table
    assert list(t.columns[:5]) == ["id", "speaker", "video", "label", "label_index"]
    assert list(t.columns[-5:]) == [f"fold{k}" for k in range(1, 6)]
    assert len(t) == len(cache) == 24 and list(t.index) == list(range(24))
    assert list(t.id) == [str(i) for i in cache.ids] and list(t.speaker) == [str(s) for s in cache.speakers]
    assert list(t.label.cat.categories) == CLASSES
    assert list(t.label) == [CLASSES[k] for k in cache.labels]
    assert (t.label_index.to_numpy() == cache.labels).all()
    failed = t[t.status == "failed"]
    assert list(failed.id) == ["c003"] and failed.error.item() == "decode: broken file"
    assert (t.status == "done").sum() == 23 and list(t.status.cat.categories) == ["pending", "done", "failed"]
    for key in ("frames", "flow", "audio"):
        assert (t[f"n_{key}"].to_numpy() == cache.lengths[key]).all()
    assert "inputs" not in t.columns
    names = {code: name for name, code in L.SPLIT_CODES.items()}
    for k in range(5):
        assert list(t[f"fold{k + 1}"]) == [names[c] for c in cache.folds[k]]
        for split in L.SPLITS:  # the rows a dataset reads are the table's committed rows of that split
            rows = t.index[(t[f"fold{k + 1}"] == split) & (t.status == "done")]
            assert list(rows) == list(cache.split_indices(k + 1, split))
    assert 3 not in cache.split_indices(1, str(t.fold1[3]))


def test_targets_soft_labels_and_inputs_in_the_table(tmp_path, with_inputs):
    url = build_feature_cache(str(tmp_path / "r.zarr"), n_clips=10, targets=("arousal", "id"))
    cache = open_cache(url)
    t = cache.table
    assert t.label.isna().all() and (t.label_index == -1).all()
    assert np.allclose(t.arousal, cache.targets[:, 0]) and np.allclose(t.target_id, cache.targets[:, 1])
    assert list(t.id) == [str(i) for i in cache.ids]  # the target named "id" did not replace it
    t = open_cache(with_inputs).table
    assert t.columns[t.columns.get_loc("n_audio") + 1] == "inputs" and (t.inputs == "done").all()


def test_the_table_without_pandas_names_the_install(toy, monkeypatch):
    import sys

    cache = open_cache(toy)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingExtraError, match=r"^FeatureCache.table needs pandas .*pip install pandas$"):
        _ = cache.table


# -- the dataset -------------------------------------------------------------------------------
def test_items_are_the_readers_valid_rows(toy):
    cache = open_cache(toy)
    ds = cache.dataset(fold=2, split="validation")
    idx = cache.split_indices(2, "validation")
    assert len(ds) == len(idx) > 0 and list(ds.indices) == list(idx)
    assert (
        repr(ds)
        == f"CacheDataset({toy!r}, fold=2, split='validation': {len(idx)} clips; frames, flow, audio)"
    )
    rows = cache.read_features(idx)
    for k, i in enumerate(idx):
        item = ds[k]
        assert set(item) == {"frames", "flow", "audio", "label", "targets", "index", "clip_id"}
        for m in ("frames", "flow", "audio"):
            assert item[m].dtype == torch.float16 and np.array_equal(item[m].numpy(), rows[m][k])
            assert len(item[m]) == cache.lengths[m][i]
        assert item["audio"].shape[1:] == (1, 8)
        assert item["label"].item() == cache.labels[i] and item["index"].item() == i
        assert item["clip_id"] == str(cache.ids[i]) and item["targets"].shape == (0,)
    assert torch.equal(ds[-1]["frames"], ds[len(ds) - 1]["frames"])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_collate_pads_with_lengths_and_masks(toy):
    ds = open_cache(toy).dataset(fold=1, split="train")
    items = [ds[k] for k in range(5)]
    batch = ds.collate(items)
    for m in ("frames", "flow", "audio"):
        lengths = [len(it[m]) for it in items]
        assert batch[m].dtype == torch.float32 and batch[m].shape[:2] == (5, max(lengths))
        assert batch[f"{m}_lengths"].tolist() == lengths
        assert batch[f"{m}_mask"].sum(1).tolist() == lengths and batch[f"{m}_mask"].dtype == torch.bool
        for k, it in enumerate(items):
            assert torch.equal(batch[m][k, : lengths[k]], it[m].float())
            assert not batch[m][k, lengths[k] :].any()
    assert batch["audio"].shape[2:] == (1, 8)
    assert batch["label"].tolist() == [it["label"].item() for it in items]
    assert batch["index"].tolist() == [it["index"].item() for it in items]
    assert batch["clip_id"] == [it["clip_id"] for it in items] and batch["targets"].shape == (5, 0)


def test_chosen_modalities_only(toy, tmp_path):
    from aver.pull import pull

    cache = open_cache(toy)
    one = cache.dataset(fold=1, split="test", modalities="flow")
    assert set(one[0]) == {"flow", "label", "targets", "index", "clip_id"}
    assert torch.equal(one[0]["flow"], cache.dataset(fold=1, split="test")[0]["flow"])
    assert cache.dataset(modalities=["audio", "frames", "audio"]).modalities == ("audio", "frames")
    rows = cache.read_features([0, 1], modalities="audio")  # the reader reads only what is asked
    assert list(rows) == ["audio"] and np.array_equal(rows["audio"][1], cache.read_features([1])["audio"][0])
    with pytest.raises(CacheError, match="^feature modalities are frames, flow, audio; not faces$"):
        cache.read_features([0], modalities=("faces",))
    # a copy pulled with frames only: a frames dataset reads it, a full one is refused up front
    pull(toy, str(tmp_path / "p.zarr"), fold=1, modalities=["frames"], progress=False)
    part = open_cache(str(tmp_path / "p.zarr"))
    assert part.dataset(modalities="frames")[0]["frames"].shape[1] == 12
    with pytest.raises(CacheError, match=r"pulled without \['flow', 'audio'\]"):
        part.dataset()


def test_bad_choices_are_one_line_errors_naming_the_choices(toy):
    cache = open_cache(toy)
    cases = [
        ({"modalities": ("frames", "video")}, ConfigError, "modality 'video' is unknown: choose from "
         "frames, flow, audio, crops, wave"),
        ({"modalities": ()}, ConfigError, "no modality chosen: choose from frames, flow, audio"),
        ({"split": "val"}, CacheError, "split must be one of ['train', 'validation', 'test'], not 'val'"),
        ({"fold": 6}, CacheError, "has folds 1..5; fold 6 does not exist"),
        ({"fold": 0}, CacheError, "has folds 1..5; fold 0 does not exist"),
        ({"fold": "1"}, ConfigError, "fold must be an integer 1..5, not '1'"),
        ({"modalities": ("frames", "crops")}, CacheError, "holds no end-to-end inputs (crops, wave): "
         "extract with --inputs crops,wave"),
    ]  # fmt: skip
    for kwargs, kind, text in cases:
        with pytest.raises(kind) as e:
            cache.dataset(**kwargs)
        assert text in str(e.value) and "\n" not in str(e.value), kwargs
        assert isinstance(e.value, ValueError)  # both kinds are ValueErrors, as a notebook expects


def test_end_to_end_inputs_as_modalities(with_inputs):
    cache = open_cache(with_inputs)
    ds = cache.dataset(fold=1, split="train", modalities=("crops", "wave", "frames"))
    idx = ds.indices
    raw = cache.read_inputs(idx)
    item = ds[1]
    assert set(item) == {
        "frames",
        "crops",
        "crop_index",
        "wave",
        "label",
        "targets",
        "soft_label",
        "index",
        "clip_id",
    }
    assert item["crops"].dtype == torch.uint8 and item["crops"].shape == (4, 16, 16, 3)
    assert np.array_equal(item["crops"].numpy(), raw["crops"][1])
    assert np.array_equal(item["crop_index"].numpy(), raw["crop_index"][1])
    assert item["wave"].dtype == torch.float32 and float(item["wave"].abs().max()) <= 1.0
    assert np.allclose(item["wave"].numpy() * L.WAVE_SCALE, raw["wave"][1])
    assert torch.allclose(item["soft_label"], torch.from_numpy(cache.soft_labels[idx[1]]))
    batch = ds.collate([ds[0], ds[1]])
    assert batch["crops"].dtype == torch.uint8 and batch["crops"].shape == (2, 4, 16, 16, 3)
    assert batch["wave_lengths"].tolist() == [len(raw["wave"][0]), len(raw["wave"][1])]
    assert batch["soft_label"].shape == (2, 3)


# -- pickling and worker processes ---------------------------------------------------------------
def test_the_dataset_pickles_without_an_open_store_and_reopens_per_process(toy):
    cache = open_cache(toy)
    ds = cache.dataset(fold=1, split="train")
    assert ds.cache is cache  # the reader it was made with, in this process
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._cache is None and copy.url == toy
    assert all(torch.equal(copy[k]["audio"], ds[k]["audio"]) for k in range(len(ds)))
    assert copy.cache is not cache and copy.cache is copy.cache  # opened once, on first use
    ds._pid = -1  # as in a forked worker: another process opens its own reader
    assert ds.cache is not cache and isinstance(ds.cache, FeatureCache)


@pytest.mark.slow
def test_dataloader_workers_spawned_and_forked_give_the_same_batches(toy):
    from torch.utils.data import DataLoader

    ds = open_cache(toy).dataset(fold=1, split="train")
    want = list(DataLoader(ds, batch_size=4, collate_fn=ds.collate))
    for context in ("fork", "spawn"):  # spawn: only what pickles reaches the workers
        got = list(
            DataLoader(
                ds, batch_size=4, collate_fn=ds.collate, num_workers=2, multiprocessing_context=context
            )
        )
        assert len(got) == len(want) == 4
        for a, b in zip(got, want, strict=True):
            assert a["clip_id"] == b["clip_id"]
            assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


# -- a notebook session ------------------------------------------------------------------------
@pytest.fixture
def notebook_matplotlib():
    """A notebook's matplotlib: a non-Agg backend that works headless (svg) and mathtext on; both
    put back afterwards, whatever the test did."""
    import matplotlib

    backend, saved = matplotlib.get_backend(), matplotlib.rcParams.copy()
    matplotlib.use("svg")
    matplotlib.rcParams["text.parse_math"] = True
    matplotlib.rcParams["font.size"] = 13.0  # a notebook's own style
    yield matplotlib
    matplotlib.rcParams.update(saved)
    matplotlib.use(backend)


def test_training_in_a_notebook_leaves_its_matplotlib_state_alone(notebook_matplotlib, toy, tmp_path):
    import matplotlib.pyplot as plt

    mpl = notebook_matplotlib
    before = dict(mpl.rcParams)
    metrics = aver.train_fold(
        toy,
        fold=1,
        preset="tiny",
        epochs=1,
        out=str(tmp_path / "run"),
        overrides={"model.d_model": 16},
        progress=False,
    )
    assert (tmp_path / "run" / "learning_curves.png").is_file() and 0 <= metrics["test_reported"][
        "accuracy"
    ] <= 1
    assert mpl.get_backend() == "svg"
    assert mpl.rcParams["text.parse_math"] is True and mpl.rcParams["font.size"] == 13.0
    assert {k: v for k, v in mpl.rcParams.items() if v != before[k]} == {}
    fig, ax = plt.subplots()  # the notebook still draws with its own backend and mathtext
    ax.set_title(r"$\alpha$")
    assert type(fig.canvas).__module__ == "matplotlib.backends.backend_svg"
    plt.close(fig)


# -- docs/api.md -------------------------------------------------------------------------------
def doc_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def predict_run(extracted_store, tmp_path_factory) -> Path:
    """A tiny run on a really extracted store: what ``aver.predict`` needs (the extraction settings
    and models to extract a new video as its cache was)."""
    out = tmp_path_factory.mktemp("api-predict") / "run"
    aver.train_fold(extracted_store, fold=1, preset="tiny", epochs=1, out=str(out), progress=False)
    return out


@pytest.mark.slow
def test_every_python_block_of_the_api_page_runs(tmp_path, monkeypatch, predict_run):
    """The page's blocks in order in one namespace, as a notebook runs them, from a folder where
    ``caches/ravdess.zarr`` is a small cache with three classes and five speaker folds; the
    prediction block scores a new synthetic video with a run on a really extracted store."""
    from aver.extract.synthetic import write_photo_clip

    monkeypatch.chdir(tmp_path)
    build_feature_cache("caches/ravdess.zarr", n_clips=30, class_names=CLASSES)
    video = write_photo_clip(tmp_path / "new.mp4", seconds=1.2)
    blocks = doc_blocks()
    assert len(blocks) >= 8 and sum("aver.predict(" in b for b in blocks) == 1
    ns: dict = {}
    fold1 = tmp_path / "runs" / "ravdess" / "de3" / "fold1" / "metrics.json"
    for k, block in enumerate(blocks):
        if "aver.predict(" in block:
            block = block.replace("runs/ravdess/de3/fold1", str(predict_run)).replace(
                "new_video.mp4", str(video)
            )
        exec(compile(block, f"{DOC.name}, python block {k + 1}", "exec"), ns)  # noqa: S102 - our own page
        if "aver.train_fold(" in block:
            trained = fold1.stat().st_mtime_ns
    _check_namespace(ns)
    assert fold1.stat().st_mtime_ns == trained  # cv and the sweep read fold 1 back, as the page says


def _check_namespace(ns: dict) -> None:
    """What the page says each block gives."""
    table = ns["table"]
    assert len(table) == 30 and ns["splits"].sum() == 30 and ns["not_committed"].empty
    assert ns["test_classes"].sum() == (table.fold1 == "test").sum()
    assert (
        ns["train"].modalities == ("frames", "flow", "audio")
        and len(ns["train"]) == (table.fold1 == "train").sum()
    )
    assert ns["probe_accuracy"] >= 0.8  # the toy's frames carry the class: a probe learns it
    assert ns["head"] in ("video", "audio", "fusion") and 0 <= ns["accuracy"] <= 1
    assert set(ns["per_head"]) == {"video", "audio", "fusion"}
    assert len(ns["history"]) == 2 and len(ns["predictions"]) == (table.fold1 == "test").sum()
    assert ns["cv_accuracy"]["n"] == 2 and list(ns["cv_table"].columns) == ["mean", "std", "n"]
    assert ns["failed"] == {} and set(ns["scores"].arm) == {"de3", "none_ife"}
    assert len(ns["accuracy_vs_full"]) == 1 and ns["accuracy_vs_full"].arm.item() == "none_ife"
    assert [r["status"] for r in ns["rows"]] == ["ok"] and ns["rows"][0]["prediction"] in ("neutral", "happy")
