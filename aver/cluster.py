"""Dask clusters for aver's work: a local one with one worker per GPU, or a running one by address.

``local_cluster(n, device)`` starts ``n`` worker processes on this machine, each behind a nanny
(a worker that dies is replaced, and the scheduler hands its task to another worker). On CUDA each
worker sees one GPU (``CUDA_VISIBLE_DEVICES`` pinned, ``cuda:i`` for worker ``i``, round robin when
there are more workers than GPUs); on the CPU the cores are shared out (``AVER_TORCH_THREADS``).
``connect(address, timeout)`` joins a running cluster (``dask scheduler`` / ``dask worker`` on any
machines, or a dask-jobqueue cluster) and says in one line when nothing answers in time.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from aver.errors import ConfigError

THREADS_ENV = "AVER_TORCH_THREADS"


def require_distributed() -> None:
    """A ``ConfigError`` saying how to install it when dask.distributed is not importable."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--workers / --scheduler need dask.distributed, which is not installed: "
            "pip install 'dask[distributed]'"
        ) from None


def worker_devices(n: int, device: str) -> list[dict[str, str]]:
    """The environment of each of ``n`` local workers for ``device``: on CUDA, worker ``i`` sees GPU
    ``i`` mod the GPU count (an explicit ``cuda:K`` pins every worker to GPU ``K``); on the CPU, each
    gets ``cores // n`` torch threads."""
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError(f"--device {device} with workers needs a CUDA device; none is visible")
        if ":" in device:
            return [{"CUDA_VISIBLE_DEVICES": device.split(":", 1)[1]} for _ in range(n)]
        return [{"CUDA_VISIBLE_DEVICES": str(i % gpus)} for i in range(n)]
    threads = max(1, (os.cpu_count() or 1) // n)
    return [{THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)} for _ in range(n)]


def local_cluster(n: int, device: str = "cpu"):
    """A ``dask.distributed.Client`` on ``n`` local worker processes (one thread each), each with
    its own device (``worker_devices``); close it with ``client.close(); client.cluster.close()``."""
    require_distributed()
    from distributed import Client, Nanny, Scheduler, SpecCluster

    envs = worker_devices(n, device)
    # Dask's own INFO lines (workers starting and closing) only with -v
    level = logging.DEBUG if logging.getLogger().getEffectiveLevel() <= logging.DEBUG else logging.WARNING
    logging.getLogger("distributed").setLevel(level)
    workers = {
        f"aver-{i}": {
            "cls": Nanny,
            # no memory limit: a run's memory is the model's and the fold's, bounded by the cache;
            # a nanny killing a worker at a share of the RAM would fail runs that fit
            "options": {"nthreads": 1, "env": env, "memory_limit": 0, "silence_logs": level},
        }
        for i, env in enumerate(envs)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard": False}}
    cluster = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=level)
    return Client(cluster)


def connect(address: str, timeout: float = 10.0):
    """A client of the running scheduler at ``address``; a ``ConfigError`` naming it when it does
    not answer within ``timeout`` seconds."""
    require_distributed()
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address}: no answer within {timeout:g} s ({type(e).__name__}); "
            "is `dask scheduler` running there and the port open? (--connect-timeout sets the wait)"
        ) from None


def apply_threads() -> None:
    """In a worker: the torch threads its cluster gave it (``AVER_TORCH_THREADS``), if any."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def close(client: Any) -> None:
    """Close a client and, when it owns one, its local cluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
