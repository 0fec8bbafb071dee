"""Issue 21's predicted CUDA defects, held on the CPU where the logic allows: the CUDA random state
in checkpoints, device indices kept, GPU assignment per worker."""

from __future__ import annotations

import logging

import pytest
import torch

from aver.train.checkpoint import load_state, save_state


def _model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_a_checkpoint_keeps_and_restores_every_gpus_random_state(tmp_path, monkeypatch):
    """#6: dropout on a GPU draws from the CUDA generators, so they are saved and restored."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.extend(s))
    model, opt = _model()
    save_state(tmp_path, model, opt, {"epoch": 3})
    assert load_state(tmp_path, *_model())["epoch"] == 3
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(restored, states, strict=True))


def test_resuming_on_fewer_gpus_says_the_draws_will_differ(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)])
    model, opt = _model()
    save_state(tmp_path, model, opt, {"epoch": 1})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        load_state(tmp_path, *_model())
    assert "1 GPU(s), resumed with 0" in caplog.text


def test_a_cpu_checkpoint_holds_no_cuda_state(tmp_path):
    from safetensors.torch import load_file

    model, opt = _model()
    save_state(tmp_path, model, opt, {"epoch": 1})
    assert not [k for k in load_file(str(tmp_path / "last.safetensors")) if k.startswith("rng.cuda")]


def test_extraction_workers_get_one_gpu_each_and_see_it_as_cuda(monkeypatch):
    """#3: ``--workers N --device cuda`` put every worker on cuda:0. Now the local cluster pins one
    GPU per worker (``aver.cluster.worker_devices``) and each worker is told plain ``cuda``."""
    from concurrent.futures import Future

    import aver.cluster
    from aver.extract.config import ExtractConfig, RuntimeConfig
    from aver.extract.pipeline import Summary, _run_distributed

    seen, asked = [], []

    class Fake:
        def submit(self, fn, cfg_dict, index, shard, *rest):
            seen.append(cfg_dict["runtime"]["device"])
            fut = Future()
            fut.set_result(Summary(total=len(shard), done=len(shard)))
            return fut

        def scheduler_info(self):
            return {"workers": {"a": {}, "b": {}}}

        def close(self):
            pass

    def fake_cluster(n, device):
        asked.append((n, device))
        return Fake()

    monkeypatch.setattr(aver.cluster, "local_cluster", fake_cluster)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = ExtractConfig(dataset="synthetic", runtime=RuntimeConfig(workers=2))
    cfg.runtime.device = "cuda:1"  # past __post_init__'s check: no GPU here
    cap = __import__("types").SimpleNamespace(frames=8, audio=8)
    total = _run_distributed(list(range(6)), None, cfg, "x.zarr", {}, cap, None, False)
    assert asked == [(2, "cuda:1")] and set(seen) == {"cuda"} and total.done == 6
    envs = aver.cluster.worker_devices(2, "cuda")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in aver.cluster.worker_devices(2, "cuda:1")] == ["1", "1"]


def test_bf16_is_asked_of_the_runs_own_gpu(monkeypatch):
    """#10: ``is_bf16_supported`` asks the current device; autocast asks the device it runs on."""
    import contextlib

    from aver import utils

    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(str(d)) or contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert utils._bf16("cuda:1") and entered == ["cuda:1"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_indexed_gpu_trains_and_scores(tmp_path):
    """#10, #11: ``cuda:N`` reaches every step (synchronise, bf16 check, scoring a cache's rows):
    ``.device.type`` dropped the index, so ``--device cuda:1`` failed."""
    import numpy as np

    import aver
    from aver.cache import FeatureCache
    from aver.testing import build_feature_cache
    from aver.train.inference import load_run, score_clips

    gpu = f"cuda:{torch.cuda.device_count() - 1}"
    cache = build_feature_cache(str(tmp_path / "toy.zarr"))
    out = tmp_path / "run"
    metrics = aver.train_fold(cache, fold=1, preset="tiny", epochs=1, device=gpu, out=str(out))
    assert metrics["test_reported"]
    run = load_run(out, gpu)
    assert str(next(run.model.parameters()).device) == gpu
    rows = score_clips(run, FeatureCache(cache), np.arange(3), {})
    assert len(rows) == 3
