"""Train one fold, top to bottom: ``setup`` (cache, model, data, optimiser) -> ``fit`` -> ``report``.

Read this file first. A run directory holds ``config.json`` (resolved), ``train.log``,
``history.json``, ``metrics.json`` (per split and head), ``predictions.csv`` (test clips),
``checkpoint/`` (best ``model.safetensors`` + ``checkpoint.json``; the resumable
``last.safetensors``, one atomic file; ``feature_stats.safetensors``) and the plots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aver.cache import FeatureCache
from aver.errors import CacheError, CheckpointError, ConfigError, TrainingError
from aver.layout import SPLITS, UNUSED
from aver.utils import autocast

from .checkpoint import (
    cache_identity,
    check_cache,
    load_model_state,
    load_state,
    save_model,
    save_state,
    save_tensors,
)
from .config import TrainConfig
from .data import ClipTensors, FeatureStats, batches, collate, load_clips, move_clips, to_device
from .heads import HEADS, output_key
from .system import INPUTS, DataSpec, InputSpec, System
from .systems import SYSTEMS, system_of
from .tasks import Task

log = logging.getLogger("aver.train")


@dataclass
class Run:
    """Everything one fold's training holds; built by ``setup``, advanced by ``fit``."""

    cfg: TrainConfig
    dir: Path
    cache: FeatureCache
    task: Task
    splits: dict[str, np.ndarray]  # cache rows of train / validation / test
    model: torch.nn.Module
    info: dict[str, Any]  # what checkpoints record: configs, variant, task, cache identity
    system: System | None = None  # the run's system (aver.train.system contract)
    config: Any = None  # its model config (the system's config dataclass)
    clips: dict[str, list[ClipTensors]] = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    stats: FeatureStats | None = None  # training-split standardisation (saved with the checkpoint)
    loaded: tuple[dict[str, int], float] = field(
        default_factory=lambda: ({}, 0.0)
    )  # clips per split, seconds
    ckpt_dir: Path | None = None  # default <dir>/checkpoint; an evaluation reads the run's own
    spec: InputSpec | None = None  # what an ``inputs`` system samples from the crops; None: features
    state: dict[str, Any] = field(
        default_factory=lambda: {"epoch": 0, "history": [], "best": -float("inf"), "bad": 0}
    )

    @property
    def ckpt(self) -> Path:
        return self.ckpt_dir or self.dir / "checkpoint"


def train_fold(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.variant`` on fold ``cfg.fold`` of ``cfg.cache``; write the run directory.

    Everything that can refuse (cache, fold, variant, model keys) is checked before the run folder
    is created. Resumes from ``<out>/checkpoint/last.*`` when present and ``cfg.resume``; a resume
    with another architecture or another cache is refused. Returns the metrics dict.
    """
    run = setup(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    with log_to(run.dir / "train.log"):
        sizes, seconds = run.loaded
        log.info("fold %d of %s: %s clips loaded in %.1f s", cfg.fold, run.cache.url, sizes, seconds)
        if run.cache.audio_fragments:
            size, hop = run.cache.audio_fragments
            log.info("audio: fragment-level features (%g s every %g s) used as stored", size, hop)
        if run.stats is not None:  # end-to-end systems read crops and waveforms: nothing to standardise
            save_tensors(run.ckpt / "feature_stats.safetensors", run.stats.tensors())
        setup_optimizer(run)
        fit(run)
        from .report import report

        metrics = report(run)
        if cfg.tensorboard:
            from .epochlog import log_results

            log_results(run.dir, run.info["train_config"], metrics, step=run.state["epoch"])
        return metrics


# -- setup ------------------------------------------------------------------------------------
def setup(cfg: TrainConfig) -> Run:
    """Open the cache, pick the fold's clips, build the model, load the data: everything that can
    refuse (a damaged chunk included) happens here, before ``train_fold`` makes the run folder."""
    seed_everything(cfg.seed)
    torch.use_deterministic_algorithms(cfg.device == "cpu", warn_only=True)
    cache = open_cache(cfg)
    task = Task.from_cache(cache, cfg.metric, cfg.data.labels)
    splits = fold_splits(cache, cfg.fold)
    system, config, model = build_system(cfg, cache, task)
    info = {
        "train_config": cfg.to_dict(),
        "model_config": system.config_dict(config),
        "system": system.name,
        "variant": cfg.variant,
        "protocol": cfg.protocol,
        "init": system.init(config),  # how the trainable backbones started (the report compares it)
        # how the cache's inputs were made: what `aver predict` extracts new videos with
        "extraction": {
            k: cache.meta.get(k) for k in ("dataset", "preset", "config", "config_hash", "models", "dims")
        }
        | {"inputs": cache.inputs},
        "task": task.name,
        "names": task.names,
        "cache": cache_identity(cache),
    }
    run = Run(cfg, Path(cfg.out), cache, task, splits, model.to(cfg.device), info, system, config)
    run.spec = system.input_spec(config)
    setup_data(run)
    return run


def build_system(cfg: TrainConfig, cache: FeatureCache, task: Task) -> tuple[System, Any, torch.nn.Module]:
    """The system of ``cfg.system``, the config of ``cfg.variant`` on ``cfg.preset`` for this cache,
    and its freshly built model (``System.make_config`` and ``System.build``)."""
    system, config = system_config(cfg, cache, task)
    return system, config, system.build(config, task.names)


def system_config(cfg: TrainConfig, cache: FeatureCache, task: Task) -> tuple[System, Any]:
    """Everything ``build_system`` checks, without building the model: the system trains this
    task, its config resolves on this cache, and the cache holds the inputs it trains on (what
    ``aver sweep`` asks of every variant before the first run starts)."""
    system = SYSTEMS.get(cfg.system)
    if task.name not in system.tasks:
        raise ConfigError(
            f"{system.name} is trained for {' or '.join(system.tasks)}; {cache.url} holds a {task.name} "
            f"task ({task.names})"
        )
    config = system.make_config(
        cfg.preset, cfg.variant, cfg.model, DataSpec(tuple(task.names), task.name, cache.dims)
    )
    spec = system.input_spec(config)
    if system.trains_on == INPUTS:
        from .e2e import check_inputs

        check_inputs(cache, spec, system.name)
    return system, config


def open_cache(cfg: TrainConfig) -> FeatureCache:
    """The run's cache (a remote URL through its local read-through copy, ``cfg.read_through``),
    with the folds of ``cfg.protocol`` when it is not the cache's own."""
    return apply_protocol(_open_cache(cfg), cfg.protocol)


def apply_protocol(cache: FeatureCache, protocol: str) -> FeatureCache:
    """``cache`` with the fold table of ``protocol`` (``aver.train.protocols``) in place of its own."""
    if protocol != "cache":
        from .protocols import describe, protocol_folds

        cache.folds = protocol_folds(cache.speakers, cache.labels, protocol)
        cache.meta = {**cache.meta, "folds_source": f"protocol {protocol}"}
        log.info("folds: %s", describe(protocol))
    return cache


def _open_cache(cfg: TrainConfig) -> FeatureCache:
    remote = "://" in cfg.cache and not cfg.cache.startswith(("file://", "memory://"))
    if not remote or cfg.read_through == "":
        return FeatureCache(cfg.cache, cfg.storage_options)
    from aver.pull import pull
    from aver.utils import aver_home, json_hash

    folder = Path(cfg.read_through) if cfg.read_through else aver_home() / "pulled"
    local = folder / f"{json_hash(cfg.cache, 16)}-{Path(cfg.cache.rstrip('/')).name}"
    s = pull(cfg.cache, str(local), fold=cfg.fold, storage_options=cfg.storage_options, progress=cfg.progress)
    log.info(
        "%s read through %s: %d clips fetched, %d already there", cfg.cache, local, s["pulled"], s["skipped"]
    )
    return FeatureCache(str(local))


def fold_splits(cache: FeatureCache, fold: int) -> dict[str, np.ndarray]:
    """Committed clips of each split of ``fold``; a split without clips is a ``CacheError``, and so
    is damage to the clip table or to any clip the fold uses (``FeatureCache.require_intact``)."""
    cache.check_fold(fold)
    cache.require_intact(np.flatnonzero(cache.folds[fold - 1] != UNUSED), full=True)
    idx = {s: cache.split_indices(fold, s) for s in SPLITS}
    empty = [s for s, v in idx.items() if len(v) == 0]
    if empty:
        raise CacheError(f"fold {fold} of {cache.url} has no extracted clips in {empty}")
    if cache.classes:
        unlabelled = [str(cache.ids[i]) for v in idx.values() for i in v if cache.labels[i] < 0]
        if unlabelled:
            raise CacheError(
                f"fold {fold} of {cache.url} uses {len(unlabelled)} clips without a label (e.g. {unlabelled[:3]})"
            )
    return idx


def setup_data(run: Run) -> None:
    """Read the fold into memory and standardise it with training statistics (kept with the checkpoint)."""
    t0 = time.perf_counter()
    if run.spec is not None:
        _setup_inputs(run)
        run.loaded = ({s: len(v) for s, v in run.clips.items()}, time.perf_counter() - t0)
        return
    run.clips = {s: load_clips(run.cache, v, run.cfg.data) for s, v in run.splits.items()}
    stats = (
        FeatureStats.from_clips(run.clips["train"])
        if run.cfg.data.standardise
        else FeatureStats.identity(run.clips["train"])
    )
    for split in run.clips.values():
        stats.apply(split)
        if run.cfg.resident and run.cfg.device != "cpu":
            move_clips(split, run.cfg.device)
    run.stats = stats
    run.loaded = ({s: len(v) for s, v in run.clips.items()}, time.perf_counter() - t0)


def _setup_inputs(run: Run) -> None:
    """The fold's crops and waveforms (end-to-end systems), on the device when ``resident``."""
    from .e2e import load_input_clips, move_input_clips

    n = run.spec.n_frames
    data = run.cfg.data
    run.clips = {
        s: load_input_clips(run.cache, v, n, data.labels, in_memory=data.inputs_in_memory)
        for s, v in run.splits.items()
    }
    if run.cfg.resident and run.cfg.device != "cpu":
        for split in run.clips.values():
            move_input_clips(split, run.cfg.device)


def make_batch(
    spec: InputSpec | None,
    clips: list,
    device: str,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> dict:
    """A batch of ``clips`` on ``device``: padded features (``spec`` None: a ``features`` system),
    or crops at ``spec.image_size`` and waveforms (augmented when ``augment``)."""
    if spec is None:
        return to_device(collate(clips), device)
    from .e2e import collate_inputs

    return collate_inputs(clips, device, spec.image_size, augment, generator)


def augments(run: Run) -> bool:
    """Whether training batches are augmented: ``cfg.augment``, else the system's default."""
    return run.system.augment if run.cfg.augment is None else bool(run.cfg.augment)


def setup_optimizer(run: Run) -> None:
    """AdamW (DE-III's optimiser) or Adam (the other systems'); restore model, optimiser and RNG
    when resuming."""
    cfg = run.cfg
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    run.optimizer = opt(run.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.resume and (run.ckpt / "last.safetensors").exists():
        saved = load_model_state(run.ckpt)[1] if (run.ckpt / "model.safetensors").exists() else run.info
        same = _as_json(saved["model_config"]) == _as_json(run.info["model_config"])  # tuples vs lists
        if not same or saved["variant"] != run.info["variant"] or system_of(saved).name != run.system.name:
            raise CheckpointError(
                f"{run.ckpt} holds a {saved['variant']} model with another architecture; resuming would "
                "change it. Use another --out, or the original settings."
            )
        check_cache(saved["cache"], run.cache, "resume")
        changed = _changed_settings(saved.get("train_config", {}), run.info["train_config"])
        if changed:
            raise CheckpointError(
                f"{run.ckpt} was trained with other settings ({changed}); resuming would mix them. "
                "Use the original settings, another --out, or --restart to start this run over."
            )
        run.state = load_state(run.ckpt, run.model, run.optimizer)
        if run.state["epoch"] > cfg.epochs:
            raise CheckpointError(
                f"{run.ckpt} has trained {run.state['epoch']} epochs, more than --epochs {cfg.epochs}: its "
                "results would not be a run of that length. Use --restart, or another --out."
            )
        log.info("resumed from %s at epoch %d", run.ckpt, run.state["epoch"])
    (run.dir / "config.json").write_text(json.dumps(run.info, indent=2, sort_keys=True, default=str))


# -- fit ----------------------------------------------------------------------------------------
# Settings that may differ between a run and its resumption: where things are, not what is learned;
# and ``epochs``, which may grow (more epochs continue the same trajectory; fewer cannot undo any).
_RESUMABLE = (
    "cache",
    "out",
    "device",
    "resume",
    "storage_options",
    "epochs",
    "progress",
    "tensorboard",
    "resident",
    "timings",
    "read_through",
    "data.inputs_in_memory",  # where crops are read from changes no number
)


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """The differences that forbid a resume; a setting added after ``saved`` was written takes
    its default there (the default reproduces what runs did before the setting existed)."""
    from aver.store import diff_dicts

    try:
        saved = TrainConfig.from_dict(saved).to_dict()
    except Exception:  # noqa: BLE001 - an unreadable saved config: compare as stored
        pass

    def keep(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        return {
            k: keep(v, f"{prefix}{k}.") if isinstance(v, dict) else v
            for k, v in d.items()
            if f"{prefix}{k}" not in _RESUMABLE
        }

    diff = diff_dicts(keep(saved), keep(now))
    return "" if diff == "none" else diff


def fit(run: Run) -> None:
    """Epochs until ``cfg.epochs`` or ``cfg.patience`` epochs without validation gain.

    The best epoch (validation ``task.select_metric`` of its best head) is saved as the model;
    the resumable state is saved after every epoch, so a killed run loses at most one epoch.
    """
    from tqdm import tqdm

    from .epochlog import EpochLog

    cfg, task, state = run.cfg, run.task, run.state
    epochs = EpochLog(run.dir, state["history"], tensorboard=cfg.tensorboard, metric=task.select_metric)
    bar = tqdm(total=cfg.epochs, initial=state["epoch"], unit="epoch", disable=not cfg.progress, leave=False)
    for epoch in range(state["epoch"], cfg.epochs):
        stats = train_epoch(run, epoch)
        val = task.score(predict(run.model, run.clips["validation"], cfg, task, run.spec))
        head, value = task.best_head(val, forced=cfg.head)
        per_head = {f"val_{h}": val[h][task.select_metric] for h in HEADS if h in val}
        row = {
            "epoch": epoch + 1,
            **stats,
            "lr": run.optimizer.param_groups[0]["lr"],
            "val_loss": val["loss"],
            "val_metric": value,
            "val_head": head,
            **per_head,
        }
        state["history"].append(row)
        epochs.add(row)
        log.info(
            "epoch %d: train loss %.4f | val loss %.4f | val %s %.4f (%s head)",
            epoch + 1,
            stats["train_loss"],
            val["loss"],
            task.select_metric,
            value,
            head,
        )
        if value > state["best"]:
            state.update(best=value, bad=0)
            save_model(
                run.ckpt, run.model, {**run.info, "epoch": epoch + 1, "val_head": head, "val_metric": value}
            )
        else:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        save_state(run.ckpt, run.model, run.optimizer, state)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['train_loss']:.3f}", val=f"{value:.3f}", head=head)
        if state["bad"] >= cfg.patience:
            log.info("early stop: no validation improvement for %d epochs", cfg.patience)
            break
    bar.close()
    epochs.close()


# Training steps between two non-finite checks on CUDA. A check reads the device (it waits for the
# GPU's queue to drain), so it looks at the losses of this many steps at once (issue 21).
FINITE_CHECK_STEPS = 25


def check_every(device: str) -> int:
    """Steps between non-finite checks: 1 on the CPU (reading a loss there waits for nothing, and
    a bad batch never reaches the optimiser), ``FINITE_CHECK_STEPS`` on CUDA."""
    return FINITE_CHECK_STEPS if str(device).startswith("cuda") else 1


def sync_each_step(cfg: TrainConfig) -> bool:
    """Whether each step waits for the GPU, so that ``data_s``/``model_s`` split every step's time
    exactly: only on CUDA and only when timings are asked for (``cfg.timings``). Otherwise the GPU
    runs ahead of the host, and the epoch's single wait at its end is counted in ``model_s``."""
    return str(cfg.device).startswith("cuda") and bool(getattr(cfg, "timings", False))


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over the training clips; returns the mean loss and where the time went.

    On CUDA no step waits for the GPU (issue 21): the loss is summed on the device and read once,
    at the end; the non-finite check reads the losses of ``check_every`` steps at once (a bad batch
    still stops the run, named by its clips: ``check_finite``); timings wait per step only when
    asked for (``sync_each_step``). On the CPU every step is checked before the optimiser step,
    and the mean loss is the same float64 sum as a per-step read.
    """
    cfg, model, clips = run.cfg, run.model, run.clips["train"]
    model.train()
    total, n, t_data, t_model = torch.zeros((), dtype=torch.float64, device=cfg.device), 0, 0.0, 0.0
    pending: list[tuple[torch.Tensor, list]] = []  # (loss, clip ids) of the steps not checked yet
    every, sync = check_every(cfg.device), sync_each_step(cfg)
    generator, augment = _augment_generator(cfg, epoch), augments(run)
    for idx in epoch_batches(run, epoch):
        t0 = time.perf_counter()
        batch = make_batch(run.spec, [clips[i] for i in idx], cfg.device, augment, generator)
        t1 = time.perf_counter()
        loss = batch_loss(run, batch)
        pending.append((loss.detach(), batch["clip_id"]))
        if len(pending) >= every:
            check_finite(pending, epoch)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        run.optimizer.step()
        if sync:
            torch.cuda.synchronize(cfg.device)  # per-step timings, on the run's own GPU (#10)
        t2 = time.perf_counter()
        total, n = total + loss.detach().double() * len(idx), n + len(idx)
        t_data, t_model = t_data + (t1 - t0), t_model + (t2 - t1)
    t2 = time.perf_counter()
    check_finite(pending, epoch)
    mean = float(total) / max(n, 1)  # the epoch's one read of the loss (it waits for the GPU)
    t_model += time.perf_counter() - t2
    return {"train_loss": mean, "data_s": t_data, "model_s": t_model, "clips": n}


def batch_loss(run: Run, batch: dict) -> torch.Tensor:
    """The training loss of ``batch``: the task's, plus the system's extra terms (metric /
    auxiliary losses of the paper), under the run's autocast."""
    with autocast(run.cfg.device, run.cfg.amp):
        out = run.model(batch)
        loss = run.task.loss(out, run.task.loss_truth(batch))
        extra = run.system.extra_loss(run.model, out, batch)
        return loss if extra is None else loss + extra


def check_finite(pending: list[tuple[torch.Tensor, list]], epoch: int) -> None:
    """Raise ``TrainingError`` naming the clips of the first batch in ``pending`` (``(loss, clip
    ids)`` per step, in order) whose loss is not finite; one read of the device for all of them.
    ``pending`` is emptied."""
    if not pending:
        return
    losses = torch.stack([loss.float() for loss, _ in pending])
    ids = [clip_ids for _, clip_ids in pending]
    pending.clear()
    bad = ~torch.isfinite(losses)
    if not bool(bad.any()):
        return
    k = int(bad.nonzero()[0, 0])
    raise TrainingError(
        f"non-finite training loss ({float(losses[k])}) at epoch {epoch + 1} on the batch of clips "
        f"{ids[k]}: lower --lr or look at those clips (aver info); the last good epoch is saved"
    )


def epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    """The epoch's batches: the system's own sampler (``System.batch_sampler``, e.g. the metric
    losses' class composition), else length-bucketed and shuffled."""
    cfg, clips = run.cfg, run.clips["train"]
    sampler = run.system.batch_sampler(
        run.config, [c.label for c in clips], list(run.task.names), cfg.data.batch_size, cfg.seed
    )
    if sampler is None:
        return batches(clips, cfg.data, shuffle=True, seed=cfg.seed * 1000 + epoch)
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


def _augment_generator(cfg: TrainConfig, epoch: int) -> torch.Generator:
    """The epoch's augmentation draws, on the training device (reproducible per seed and epoch)."""
    g = torch.Generator(device=cfg.device)
    g.manual_seed(cfg.seed * 1000 + epoch + 1)
    return g


@torch.no_grad()
def predict(
    model, clips: list[ClipTensors], cfg: TrainConfig, task: Task, spec: InputSpec | None = None
) -> dict[str, Any]:
    """Every head's outputs for ``clips`` (in their order), the truth, and the loss over the split.

    The loss is computed once over the whole split: CCC is a corpus-level statistic.
    """
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    order, truth, loss_truth = [], [], []
    for idx in batches(clips, cfg.data, shuffle=False, seed=0):
        batch = make_batch(spec, [clips[i] for i in idx], cfg.device)
        with autocast(cfg.device, cfg.amp):
            out = model(batch)
        for h in HEADS:
            if out.get(output_key(h)) is not None:
                outs.setdefault(h, []).append(out[output_key(h)].float().cpu())
        order.extend(idx)
        truth.append(task.truth(batch).cpu())
        loss_truth.append(task.loss_truth(batch).cpu())
    inverse = torch.as_tensor(order).argsort()
    heads = {h: torch.cat(v)[inverse] for h, v in outs.items()}
    y = torch.cat(truth)[inverse]
    y_loss = torch.cat(loss_truth)[inverse]
    loss = (
        float(task.loss({output_key(h): v for h, v in heads.items()}, y_loss))
        if len(clips) > 1
        else float("nan")
    )
    return {**{h: v.numpy() for h, v in heads.items()}, "truth": y.numpy(), "loss": loss}


# -- small helpers --------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def log_to(path: Path):
    """Copy the ``aver.train`` log into ``path`` for the duration of the block."""
    handler = logging.FileHandler(path)
    from aver.utils import InertFormatter

    handler.setFormatter(InertFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("aver.train")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)  # a notebook's logging is left as it was
        handler.close()
