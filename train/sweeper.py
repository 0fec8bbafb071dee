"""``aver sweep``: a plan of variants × folds × seeds (× fold protocols) for one system on one cache,
run as Dask tasks, then statistics that say which differences to the full model are real.

Every run is the run ``aver train`` makes, in ``<out>/<variant>[@<protocol>]/fold<k>[/seed<s>]``:
the folder ``aver cv`` gives each variant, so sweeps, cross-validations and single runs share run
folders, resume and the report. A run already complete with the same settings is not trained
again, so a sweep stopped anywhere is resumed by running the same command. ``aver cv`` is the
one-variant case of ``run_jobs``.

Engines: this process (0 or 1 workers), a local Dask cluster (``--workers N``: one worker process
per GPU with ``CUDA_VISIBLE_DEVICES`` pinned, or CPU processes sharing the cores), or a running
cluster (``--scheduler tcp://host:port``). A worker that dies has its run retried by the scheduler on
another worker, which resumes it from its checkpoint; a run that fails for a reason of its own is
recorded with its cause and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aver.errors import AverError, CheckpointError, ConfigError, RunsFailed

from .config import TrainConfig

log = logging.getLogger("aver.train")

__all__ = ["Job", "RunsFailed", "plan_jobs", "run_job", "run_jobs", "sweep"]

# Settings that do not change a run's numbers: a finished run made with other values of these
# is the same run (another machine, device index, mount point or progress display).
RUNTIME_FIELDS = (
    "out",
    "timings",
    "resume",
    "progress",
    "device",
    "read_through",
    "storage_options",
    "tensorboard",
    "cache",
)


@dataclass
class Job:
    """One run of a plan: its folder (relative ``name`` under the sweep's folder) and config."""

    name: str
    arm: str  # the variant, with ``@protocol`` when the folds are not the cache's
    fold: int
    seed: int
    config: dict[str, Any]

    @property
    def out(self) -> Path:
        return Path(self.config["out"])


def arm_name(variant: str, protocol: str = "cache") -> str:
    return variant if protocol == "cache" else f"{variant}@{protocol}"


def parse_folds(text: str | None, n_folds: int | None = None) -> list[int] | None:
    """``"1-5"``, ``"1,3,5"`` or ``"1-3,5"`` as fold numbers; ``None`` for all. An empty list, a
    reversed range or a fold the cache lacks is a ``ConfigError``."""
    if text is None:
        return None
    folds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"--folds takes fold numbers such as 1-5 or 1,3,5, not {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ConfigError(f"--folds {text!r}: the range {part} is empty")
        folds += [k for k in range(lo, hi + 1) if k not in folds]
    if not folds:
        raise ConfigError(f"--folds {text!r} names no fold")
    if n_folds is not None and max(folds) > n_folds:
        raise ConfigError(f"--folds {text!r}: the cache has folds 1..{n_folds}")
    return folds


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` or ``"0-4"`` as seeds; ``None``: the config's one seed."""
    if text is None:
        return None
    try:
        return parse_folds(text.replace(" ", "")) if "-" in text else [int(s) for s in text.split(",")]
    except (ConfigError, ValueError):
        raise ConfigError(f"--seeds takes seeds such as 0,1,2 or 0-4, not {text!r}") from None


def plan_jobs(
    configs: dict[str, TrainConfig], folds: list[int], seeds: list[int], out: Path, arm_folders: bool = True
) -> list[Job]:
    """The runs of ``configs`` (one per arm) × ``folds`` × ``seeds``: ``<out>/<arm>/fold<k>`` (with
    ``/seed<s>`` when there are several seeds); without ``arm_folders`` (``aver cv``) the one arm's
    runs go straight into ``<out>``."""
    jobs = []
    for arm, cfg in configs.items():
        for k in folds:
            for s in seeds:
                name = f"fold{k}" if len(seeds) == 1 else f"fold{k}/seed{s}"
                name = f"{arm}/{name}" if arm_folders else name
                config = {**cfg.to_dict(), "fold": k, "seed": s, "out": str(out / name)}
                jobs.append(Job(name, arm, k, s, config))
    return jobs


# -- one run ------------------------------------------------------------------------------------
def run_job(config: dict[str, Any]) -> dict[str, Any]:
    """Train one run (in this process or on a Dask worker) and say how it went: ``{"status": "ok",
    "metrics": test metrics, "seconds"}`` or ``{"status": "failed", "cause"}``. A failure of the
    run's own (bad settings, a non-finite loss, a damaged clip, a bug) is returned, not raised, so
    the scheduler does not retry it; only a worker's death makes Dask run it again elsewhere."""
    import socket
    import traceback

    from aver.cluster import apply_threads

    from .recipe import train_fold

    apply_threads()
    t0 = time.perf_counter()
    try:
        metrics = train_fold(TrainConfig.from_dict(config))
    except AverError as e:
        return {"status": "failed", "cause": str(e), "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - one run's bug must not stop the others; traceback kept
        return {
            "status": "failed",
            "cause": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            "seconds": time.perf_counter() - t0,
        }
    return {
        "status": "ok",
        "metrics": test_metrics(metrics),
        "seconds": time.perf_counter() - t0,
        "host": socket.gethostname(),
    }


def test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a sweep keeps of a run's ``metrics.json``: the reported head's and every head's test
    metrics, the reported head's name and the fold."""
    runs = {"reported": metrics["test_reported"]}
    runs.update({h: m for h, m in metrics["test"].items() if isinstance(m, dict)})
    return {"test": runs, "reported_head": metrics.get("reported_head"), "fold": metrics.get("fold")}


def finished(job: Job) -> dict[str, Any] | None:
    """The outcome of ``job`` when its folder holds a complete run made with the same settings
    (``metrics.json`` written last); ``None`` when it must be trained. A complete run made with
    other settings is a ``mismatch`` naming them (``run_jobs`` refuses it: never overwritten
    silently, never mixed into the statistics)."""
    metrics_file, config_file = job.out / "metrics.json", job.out / "config.json"
    if not job.config.get("resume", True) or not metrics_file.is_file() or not config_file.is_file():
        return None
    try:
        saved = json.loads(config_file.read_text())["train_config"]
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: trained again (train_fold refuses a checkpoint that does not fit)
    differ = settings_differ(saved, job.config)
    if differ:
        return {
            "status": "mismatch",
            "cause": f"{job.out} holds a finished run with other settings ({'; '.join(differ[:4])})",
        }
    return {"status": "complete", "metrics": test_metrics(metrics), "seconds": 0.0}


def settings_differ(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``key: saved -> wanted`` for each setting that changes a run's numbers (not ``RUNTIME_FIELDS``)."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        if key in RUNTIME_FIELDS:
            continue
        a, b = saved.get(key), wanted.get(key)
        if a != b:
            out.append(f"{key}: {json.dumps(a)} there, {json.dumps(b)} here")
    return out


# -- many runs ----------------------------------------------------------------------------------
def run_jobs(
    jobs: list[Job],
    *,
    workers: int = 0,
    scheduler: str | None = None,
    progress: bool = True,
    connect_timeout: float = 10.0,
    client: Any = None,
) -> dict[str, dict[str, Any]]:
    """Every job's outcome by name: complete runs are read back, the others trained here (0 or 1
    workers), on a local Dask cluster of ``workers`` processes, on the running cluster at
    ``scheduler``, or on ``client``. Outcomes: ``ok``, ``complete`` (trained before) or ``failed``
    (with its ``cause``). A finished run with other settings in a run's folder is refused before
    anything trains (``CheckpointError``)."""
    outcomes = {job.name: finished(job) for job in jobs}
    mismatched = [o["cause"] for o in outcomes.values() if o and o["status"] == "mismatch"]
    if mismatched:
        more = f" (and {len(mismatched) - 1} more runs)" if len(mismatched) > 1 else ""
        raise CheckpointError(
            f"{mismatched[0]}{more}: --restart trains them again with these settings, or choose another --out"
        )
    todo = [job for job in jobs if outcomes[job.name] is None]
    if outcomes and len(todo) < len(jobs):
        log.info("%d of %d runs already complete: not trained again", len(jobs) - len(todo), len(jobs))
    if todo:
        dask = client is not None or scheduler or (workers > 1 and len(todo) > 1)
        run = _run_on_dask if dask else _run_here
        outcomes.update(run(todo, workers, scheduler, progress, connect_timeout, client))
    return outcomes  # type: ignore[return-value]


def _bar(todo: list[Job], progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=len(todo), desc="runs", unit="run", disable=not progress or len(todo) < 2, leave=True)


def _run_here(todo, workers, scheduler, progress, timeout, client) -> dict[str, dict]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    out = {}
    bar = _bar(todo, progress)
    failed = 0
    with bar, logging_redirect_tqdm():  # log lines above the bar, not through it
        for job in todo:
            config = {**job.config, "progress": job.config.get("progress", True) and bar.disable}
            out[job.name] = outcome = run_job(config)
            failed += outcome["status"] == "failed"
            _note(job, outcome)
            bar.update()
            bar.set_postfix_str(f"failed {failed}" if failed else "")
    return out


def _run_on_dask(todo, workers, scheduler, progress, timeout, client) -> dict[str, dict]:
    """The runs as Dask tasks: submitted at once, collected as they finish; a bar shows runs done,
    running and failed with an ETA."""
    from distributed import wait
    from distributed.client import FutureCancelledError

    from aver import cluster

    own = client is None
    if own:
        client = (
            cluster.connect(scheduler, timeout)
            if scheduler
            else cluster.local_cluster(min(workers, len(todo)), todo[0].config["device"])
        )
    try:
        local = own and not scheduler
        token = uuid.uuid4().hex[:8]
        futures = {}
        for job in todo:
            config = {**job.config, "progress": False}  # several bars at once would garble the terminal
            if local and config["device"].startswith("cuda"):
                config["device"] = "cuda"  # each local worker sees its one GPU as cuda:0
            futures[client.submit(run_job, config, key=f"aver-run-{token}-{job.name}", pure=False)] = job
        keys = {f.key for f in futures}
        out, failed = {}, 0
        pending = set(futures)
        with _bar(todo, progress) as bar:
            while pending:
                try:
                    done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished this second: refresh the bar
                    done = set()
                for fut in done:
                    job = futures[fut]
                    try:
                        outcome = fut.result()
                    except (FutureCancelledError, Exception) as e:  # noqa: BLE001 - KilledWorker and kin
                        outcome = {"status": "failed", "cause": _lost(e)}
                    out[job.name] = outcome
                    failed += outcome["status"] == "failed"
                    _note(job, outcome)
                    bar.update()
                running = _running(client, keys)
                bar.set_postfix_str(f"running {running}" + (f", failed {failed}" if failed else ""))
        return out
    finally:
        if own:
            cluster.close(client)


def _running(client: Any, keys: set) -> int:
    """Runs being trained now: a worker may hold more of our tasks than it has threads (queued)."""
    threads = client.nthreads()
    return sum(min(threads.get(w, 1), sum(k in keys for k in ks)) for w, ks in client.processing().items())


def _lost(e: BaseException) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return (
            f"every worker that took this run died (dask KilledWorker: {e}); its folder keeps the last "
            "checkpoint, and the same command resumes it"
        )
    return f"{name}: {e}"


def _note(job: Job, outcome: dict[str, Any]) -> None:
    if outcome["status"] == "failed":
        log.warning("run %s failed: %s", job.name, outcome["cause"])
    else:
        log.debug("run %s done in %.1f s", job.name, outcome.get("seconds", 0.0))


def failures(outcomes: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: o["cause"] for name, o in outcomes.items() if o["status"] == "failed"}


def _reference(system: str) -> str:
    from .systems import SYSTEMS

    return SYSTEMS.get(system).default_variant


def _plan(
    system: str | None, variants: list[str] | None, table: str | None, protocols: list[str] | None
) -> tuple[str, list[str], list[str], list[str], tuple[str, ...]]:
    """(system, variants with the reference first, protocols, notes, the table's datasets)."""
    from .paper import paper_table
    from .systems import SYSTEMS

    notes: list[str] = []
    datasets: tuple[str, ...] = ()
    if table:
        plan = paper_table(table)
        if system and system != plan.system:
            raise ConfigError(f"--table {table} is a table of {plan.system}'s paper, not of --model {system}")
        system, variants = plan.system, variants or plan.variants
        protocols = protocols or plan.protocols
        datasets = tuple(plan.datasets)
        notes.append(f"{', '.join(plan.titles)} of {SYSTEMS.get(system).paper}")
    system = system or SYSTEMS.default_name()
    if not variants:
        raise ConfigError("a sweep needs its variants: --variants A,B (`aver variants`) or --table SYSTEM:N")
    reference = _reference(system)
    if reference not in variants:
        variants = [reference, *variants]
        notes.append(f"{reference} (the full model) added as the reference every variant is compared with")
    return system, list(variants), list(protocols or ["cache"]), notes, datasets


def _dataset_note(datasets: tuple[str, ...], dataset: str | None) -> list[str]:
    if not datasets or dataset in datasets:
        return []
    return [
        f"the table reports {', '.join(datasets)}; this cache holds {dataset}: "
        "the report will not set the paper's values beside these runs"
    ]


def _arm_configs(cache, opts, system, variants, protocols, folds, preset, overrides, fields):
    """One TrainConfig per arm (variant × protocol), each checked against the cache before any run:
    its folds exist under its protocol, the cache holds the variant's inputs and task."""
    from aver.cache import FeatureCache

    from .config import make_config
    from .recipe import apply_protocol, system_config
    from .tasks import Task

    configs: dict[str, TrainConfig] = {}
    for protocol in protocols:
        folded = apply_protocol(FeatureCache(cache, opts), protocol)
        for k in folds or range(1, folded.n_folds + 1):
            folded.check_fold(k)
        for variant in variants:
            # the sweep's bar counts runs: a run's own epoch bar would only interleave with it
            cfg = make_config(
                preset,
                overrides,
                cache=cache,
                system=system,
                variant=variant,
                protocol=protocol,
                **{**fields, "progress": False},
            )
            task = Task.from_cache(folded, cfg.metric, cfg.data.labels)
            system_config(cfg, folded, task)
            configs[arm_name(variant, protocol)] = cfg
    return configs, FeatureCache(cache, opts)


# -- a sweep ------------------------------------------------------------------------------------
def sweep(
    cache: str,
    *,
    system: str | None = None,
    variants: list[str] | None = None,
    table: str | None = None,
    folds: list[int] | None = None,
    seeds: list[int] | None = None,
    protocols: list[str] | None = None,
    out: str | None = None,
    runs: str = "runs",
    preset: str = "paper",
    overrides: dict[str, Any] | list[str] | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    client: Any = None,
    connect_timeout: float = 10.0,
    progress: bool = True,
    confidence: float = 0.95,
    alpha: float = 0.05,
    test: str = "t",
    **fields: Any,
) -> dict[str, Any]:
    """Run ``variants`` (or the paper table ``table``, e.g. ``"de3:2"``) × ``folds`` × ``seeds``
    (× ``protocols``) of ``system`` on ``cache``, then the statistics; writes ``sweep.json``,
    ``.csv``, ``.md`` and the forest plot into ``out`` and returns the ``sweep.json`` document
    (``doc["failed"]``: each failed run and its cause). Everything that can refuse (variants, table,
    folds, the cache's inputs for each variant, the scheduler) does so before the first run."""
    from .api import default_out

    system, variants, protocols, notes, datasets = _plan(system, variants, table, protocols)
    if seeds is not None and not seeds:
        raise ConfigError("--seeds names no seed")
    reference = _reference(system)
    opts = fields.get("storage_options") or {}
    configs, store = _arm_configs(cache, opts, system, variants, protocols, folds, preset, overrides, fields)
    notes += _dataset_note(datasets, store.meta.get("dataset"))
    folds = folds or list(range(1, store.n_folds + 1))
    seeds = seeds or [next(iter(configs.values())).seed]
    folder = Path(out) if out else Path(default_out(cache, reference, system, "cache", runs)).parent
    jobs = plan_jobs(configs, folds, seeds, folder)
    from aver.utils import check_out_dir

    from .sweep_report import write_sweep

    check_out_dir(folder, "--out" if out else "--runs")
    engine = {
        "workers": workers,
        "scheduler": scheduler,
        "connect_timeout": connect_timeout,
        "client": client,
    }
    outcomes = run_jobs(jobs, progress=progress, **engine)
    settings = dict(
        cache=cache, system=system, variants=variants, reference=arm_name(reference, protocols[0])
    )
    settings.update(table=table, folds=folds, seeds=seeds, protocols=protocols, preset=preset, notes=notes)
    return write_sweep(
        folder, settings, jobs, outcomes, confidence=confidence, alpha=alpha, test=test, arms=configs
    )
