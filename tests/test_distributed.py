"""The same extraction serially, on a process pool, on a Dask cluster and into S3 (moto)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from conftest import small_index
from test_pipeline import assert_same_arrays

from aver.extract.pipeline import restore_environ, run_extraction
from aver.layout import open_root


@pytest.mark.slow
def test_local_dask_cluster_from_runtime_workers(extracted_store, small_corpus, tiny_config, tmp_path):
    """``runtime.workers=2``: aver starts and stops the cluster itself and leaves the environment as it was."""
    from aver.overrides import apply_overrides

    before = dict(os.environ)
    cfg = apply_overrides(tiny_config, ["runtime.workers=2"])
    summary = run_extraction(cfg, small_index(small_corpus), str(tmp_path / "w.zarr"), progress=False)
    assert summary.done == 6 and dict(os.environ) == before
    assert_same_arrays(str(tmp_path / "w.zarr"), extracted_store, exact=False)


@pytest.mark.slow
def test_process_pool_matches_serial(extracted_store, small_corpus, tiny_config, tmp_path):
    url = str(tmp_path / "pool.zarr")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        summary = run_extraction(tiny_config, small_index(small_corpus), url, executor=pool, progress=False)
    assert summary.done == 6 and summary.failed == 0
    assert_same_arrays(url, extracted_store, exact=False)  # 1 thread per worker


@pytest.mark.slow
def test_dask_cluster_matches_serial(extracted_store, small_corpus, tiny_config, tmp_path):
    from dask.distributed import Client, LocalCluster

    url = str(tmp_path / "dask.zarr")
    saved = dict(os.environ)
    try:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            with Client(cluster) as client:
                summary = run_extraction(
                    tiny_config, small_index(small_corpus), url, executor=client, progress=False
                )
    finally:
        restore_environ(saved)  # Dask set OMP_NUM_THREADS=1 here; later subprocesses must not inherit it
    assert summary.done == 6
    assert_same_arrays(url, extracted_store, exact=False)  # 1 thread per worker


@pytest.mark.slow
def test_extract_into_s3_and_read_back(extracted_store, small_corpus, tiny_config, s3_endpoint):
    from aver.cache import FeatureCache

    url = "s3://aver-caches/team/synthetic.zarr"
    summary = run_extraction(
        tiny_config, small_index(small_corpus), url, storage_options=s3_endpoint, limit=3, progress=False
    )
    assert summary.done == 3
    # a second run resumes in the bucket
    summary = run_extraction(
        tiny_config, small_index(small_corpus), url, storage_options=s3_endpoint, progress=False
    )
    assert summary.skipped == 3 and summary.done == 3
    remote, local = open_root(url, "r", s3_endpoint), open_root(extracted_store, "r")
    for name in ("frames/features", "flow/features", "audio/features", "clips/status", "folds/split"):
        assert (remote[name][:] == local[name][:]).all(), name
    cache = FeatureCache(url, storage_options=s3_endpoint)
    assert cache.clip(0).frames.shape[0] == 20
