"""Checkpoints as safetensors + JSON: loading one never executes code.

A checkpoint folder holds ``model.safetensors`` and ``checkpoint.json`` (the resolved training
config, the model config, and the provenance of the cache it was trained on). The resumable
state adds ``last.safetensors`` (model, optimiser tensors, RNG state) and ``trainer_state.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from aver.errors import CheckpointError
from aver.utils import atomic_write_json, save_safetensors


def cache_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on with a cache (from ``attrs.aver``)."""
    return {
        "dataset": meta.get("dataset"),
        "config_hash": meta.get("config_hash"),
        "classes": meta.get("classes"),
        "targets": meta.get("targets"),
        "dims": meta.get("dims"),
    }


def check_cache(saved: dict[str, Any], meta: dict[str, Any], url: str, what: str) -> None:
    """Refuse a cache whose provenance differs from the one the checkpoint was trained on."""
    now = cache_identity(meta)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs cache {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if diffs:
        raise CheckpointError(
            f"cannot {what}: the cache {url} is not the one this checkpoint was trained on ("
            + "; ".join(diffs)
            + "). Use the original cache or train a new model."
        )


def save_model(folder: Path, model: torch.nn.Module, info: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), folder / "model.safetensors")
    atomic_write_json(folder / "checkpoint.json", info)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_safetensors(tensors, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path} is missing from the checkpoint")
    return load_file(str(path))


def load_model_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = folder / "model.safetensors"
    if not path.exists() or not (folder / "checkpoint.json").exists():
        raise CheckpointError(
            f"no checkpoint at {folder} (expected model.safetensors and checkpoint.json): "
            "is this a run folder written by `aver train`?"
        )
    return load_file(str(path)), json.loads((folder / "checkpoint.json").read_text())


def save_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """The resumable state: model, optimiser tensors and RNG in safetensors, the rest in JSON."""
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
    save_safetensors(tensors, folder / "last.safetensors")
    atomic_write_json(folder / "trainer_state.json", {**state, "optimizer": opt_meta})


def load_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Restore what ``save_state`` wrote; ``None`` when there is nothing to resume."""
    if not (folder / "last.safetensors").exists() or not (folder / "trainer_state.json").exists():
        return None
    tensors = load_file(str(folder / "last.safetensors"))
    state = json.loads((folder / "trainer_state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_meta = state.pop("optimizer")
    opt_state: dict[int, dict[str, Any]] = {int(pid): dict(slots) for pid, slots in opt_meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": opt_meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return state
