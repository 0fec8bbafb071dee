"""Checkpoints as safetensors + JSON: loading one never executes code.

A checkpoint folder holds ``model.safetensors`` and ``checkpoint.json`` (the resolved training
config, the model config, and the provenance of the cache it was trained on). The resumable
state is ``last.safetensors`` alone (model, optimiser tensors, RNG state; the trainer state as metadata),
so each save is one atomic rename. ``model.safetensors`` also carries its info as metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from aver.cache import FeatureCache
from aver.errors import CheckpointError
from aver.utils import atomic_write_json, json_hash, save_safetensors

log = logging.getLogger(__name__)

INFO_KEY = "aver.checkpoint"  # safetensors metadata: the checkpoint info (configs, cache identity)
STATE_KEY = "aver.trainer_state"  # safetensors metadata: epoch, history, best, optimiser fields


def cache_identity(cache: FeatureCache) -> dict[str, Any]:
    """What a checkpoint must agree on with a cache: provenance, label space, feature sizes, and
    the clip list and folds themselves (another subset with the same config is another corpus)."""
    meta = cache.meta
    return {
        "dataset": meta.get("dataset"),
        "config_hash": meta.get("config_hash"),
        "classes": meta.get("classes"),
        "targets": meta.get("targets"),
        "dims": meta.get("dims"),
        "clips_sha256": json_hash([str(i) for i in cache.ids], 64),
        "folds_sha256": hashlib.sha256(
            np.ascontiguousarray(cache.folds, dtype=np.int8).tobytes()
        ).hexdigest(),
        "folds_source": meta.get("folds_source"),
        "label_source": cache.label_source,
        "labels_sha256": hashlib.sha256(
            np.ascontiguousarray(cache.labels, dtype=np.int64).tobytes()
            + (b"" if cache.soft_labels is None else np.ascontiguousarray(cache.soft_labels).tobytes())
        ).hexdigest(),
        "flow_schedule": list(cache.flow_schedule),
    }


def check_cache(saved: dict[str, Any], cache: FeatureCache, what: str) -> None:
    """Refuse a cache whose identity differs from the one the checkpoint was trained on.

    Keys a checkpoint from an older aver does not have are not compared.
    """
    now = cache_identity(cache)
    diffs = [
        f"{k}: checkpoint {saved[k]!r} vs cache {now[k]!r}" for k in now if k in saved and saved[k] != now[k]
    ]
    if diffs:
        raise CheckpointError(
            f"cannot {what}: the cache {cache.url} is not the one this checkpoint was trained on ("
            + "; ".join(diffs)
            + "). Use the original cache or train a new model."
        )


def save_model(folder: Path, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """The best model: weights and ``info`` in one atomic file (``checkpoint.json`` is a readable copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {INFO_KEY: json.dumps(info, sort_keys=True, default=str)}
    save_safetensors(model.state_dict(), folder / "model.safetensors", metadata=meta)
    atomic_write_json(folder / "checkpoint.json", info)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_safetensors(tensors, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path} is missing from the checkpoint")
    return load_file(str(path))


def load_model_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and info of the best model; the info comes from the same file as the weights."""
    path = folder / "model.safetensors"
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {folder} (expected model.safetensors): is this a run folder written by `aver train`?"
        )
    meta = _metadata(path)
    if INFO_KEY in meta:
        info = json.loads(meta[INFO_KEY])
    elif (folder / "checkpoint.json").exists():  # runs written before aver 0.2
        info = json.loads((folder / "checkpoint.json").read_text())
    else:
        raise CheckpointError(f"{path} carries no checkpoint information (and there is no checkpoint.json)")
    return load_file(str(path)), info


def save_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """The resumable state in ONE file, ``last.safetensors``: model, optimiser tensors and RNG as
    tensors, the trainer state and the optimiser's other fields as JSON metadata. One atomic rename
    commits it, so a kill can never pair the tensors of one epoch with the state of another."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state": {}}
    for pid, slots in opt["state"].items():
        opt_meta["state"][str(pid)] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                opt_meta["state"][str(pid)][name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    # dropout on a GPU draws from the CUDA generators: without them a resumed run diverges (#6)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    meta = {STATE_KEY: json.dumps({**state, "optimizer": opt_meta}, default=str)}
    save_safetensors(tensors, folder / "last.safetensors", metadata=meta)


def load_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Restore what ``save_state`` wrote; ``None`` when there is nothing to resume."""
    path = folder / "last.safetensors"
    if not path.exists():
        return None
    meta = _metadata(path)
    if STATE_KEY not in meta:
        raise CheckpointError(
            f"{path} carries no trainer state: start over with --restart or use another --out"
        )
    tensors = load_file(str(path))
    state = json.loads(meta[STATE_KEY])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_meta = state.pop("optimizer")
    opt_state: dict[int, dict[str, Any]] = {int(pid): dict(slots) for pid, slots in opt_meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": opt_meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    _restore_cuda_rng(tensors, path)
    return state


def _restore_cuda_rng(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The CUDA generators ``save_state`` kept, when this machine has as many GPUs; otherwise one
    line saying the resumed run's random draws will differ from an uninterrupted run's."""
    saved = [
        tensors[k]
        for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    ]
    if not saved:
        return
    if torch.cuda.is_available() and torch.cuda.device_count() == len(saved):
        torch.cuda.set_rng_state_all(saved)
        return
    log.warning(
        "%s: saved with the random state of %d GPU(s), resumed with %d; the rest of this run draws "
        "other dropout masks than an uninterrupted run would",
        path,
        len(saved),
        torch.cuda.device_count() if torch.cuda.is_available() else 0,
    )
