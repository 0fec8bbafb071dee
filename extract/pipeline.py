"""The extraction driver: plan, write the template, run the clips (here or on Dask), summarise.

Within one process, clips are decoded ahead of the models by a small thread pool (decoding and
MTCNN overlap with flow and encoders), then packed into groups of about
``runtime.group_frames`` frames whose images run through the models in fixed-size batches. Each
finished clip is committed at once, so an interrupted run loses at most the clips in flight.

With ``runtime.workers > 0`` (a local Dask cluster) or ``runtime.scheduler`` (a running one,
e.g. one worker per GPU on many machines), pending clips are split into shards; every worker
builds the models once and writes its clips straight into the store (local path or fsspec URL).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from aver.errors import CacheMismatchError, ClipError
from aver.layout import DONE, FAILED, PENDING
from aver.lease import StoreLease
from aver.store import CacheWriter, Capacity

from .config import ExtractConfig
from .datasets.base import DatasetIndex

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did. ``failures`` maps clip id -> cause (this run's new failures)."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    store: str = ""  # the store's path or URL
    inputs_filled: int = 0  # committed clips given their end-to-end inputs (inputs/*) by this run
    notes: dict[str, str] = field(default_factory=dict)  # clip id -> what was cut or kept (clips/note)

    def merge(self, other: Summary) -> None:
        self.done += other.done
        self.failed += other.failed
        self.frames += other.frames
        self.failures.update(other.failures)
        self.notes.update(other.notes)

    def report(self, shown: int = 10) -> str:
        """What the run did, for a terminal: every failure, and the clips committed with a note
        (cut to the store's capacity, or kept although frames were lost), the first ``shown`` of
        them. Ids and causes come from the data: their control characters are shown escaped."""
        from aver.utils import for_terminal

        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"clips: {self.total} | done now: {self.done} | skipped (already done): {self.skipped} | "
            f"failed: {self.failed} | {self.frames} frames in {self.seconds:.1f} s ({fps:.1f} frames/s)"
        ]
        if self.inputs_filled:
            lines.append(f"end-to-end inputs added to {self.inputs_filled} clips extracted before")
        for cid, cause in sorted(self.failures.items()):
            lines.append(f"  FAILED {for_terminal(cid)}: {for_terminal(cause)}")
        if self.notes:
            lines.append(
                f"{len(self.notes)} clips done with a note (cut, or kept despite lost frames; in clips/note, "
                "`aver info` lists them):"
            )
            for cid, note in sorted(self.notes.items())[:shown]:
                lines.append(f"  NOTE {for_terminal(cid)}: {for_terminal(note)}")
            if len(self.notes) > shown:
                lines.append(f"  ... and {len(self.notes) - shown} more")
        return "\n".join(lines)

    def all_failed(self) -> bool:
        """Every clip this run tried failed and the store holds none extracted before: nothing
        usable came out (``aver extract`` then exits non-zero; any success, now or before, is 0)."""
        return self.failed > 0 and self.done == 0 and self.skipped == 0

    def common_cause(self) -> str:
        """The most frequent failure stage of this run, with how many clips and one example cause:
        ``[decode] in 5 of 6 clips, e.g. <cause>`` (the cause text as the clips record it)."""
        import re

        stages = collections.Counter()
        example: dict[str, str] = {}
        for cause in self.failures.values():
            m = re.search(r"\[(\w+)\] (.*)", cause, re.S)
            stage, text = (m.group(1), m.group(2)) if m else ("other", cause)
            stages[stage] += 1
            example.setdefault(stage, text)
        if not stages:
            return "unknown"
        stage, count = stages.most_common(1)[0]
        return f"[{stage}] in {count} of {len(self.failures)} clips, e.g. {example[stage]}"


def plan_capacity(index: DatasetIndex, cfg: ExtractConfig, audio_rate_hz: float) -> Capacity:
    """Padded time-axis lengths from container headers (no decoding), with a small margin."""
    from .media import probe_video

    def probe(rec):
        try:
            info = probe_video(rec.video)
        except ClipError:
            return 0, 0.0
        seconds = max(info.duration_s, info.audio_duration_s)
        if rec.audio:
            seconds = max(seconds, _audio_seconds(rec.audio))
        # A header may give neither a frame count nor a duration (raw H.264): then the audio's
        # length at the stream's rate is the best estimate, so such a clip is not cut short.
        return max(
            info.n_frames, math.ceil(info.duration_s * info.fps), math.ceil(seconds * info.fps)
        ), seconds

    with ThreadPoolExecutor(8) as pool:
        probed = list(pool.map(probe, index.clips))
    frames = max((f for f, _ in probed), default=1) + 2
    seconds = max((s for _, s in probed), default=1.0)
    if cfg.max_seconds:
        fps = max(frames / max(seconds, 1e-6), 1.0)
        frames = min(frames, math.ceil(cfg.max_seconds * fps) + 2)
        seconds = min(seconds, cfg.max_seconds)
    return Capacity(frames=max(frames, 2), audio=int(math.ceil(seconds * audio_rate_hz)) + 2)


def _audio_seconds(path: str) -> float:
    import av

    try:
        with av.open(path) as c:
            return float(c.duration or 0) / 1e6
    except (av.error.FFmpegError, OSError):
        return 0.0


def prefetch_depth(runtime) -> int:
    """Threads that prepare clips ahead of the models (``_prepared``; twice as many clips are in
    flight): ``runtime.prefetch``, or when it is unset the device's default (``DEVICE_DEFAULTS``:
    more on a GPU, whose models consume clips faster than two threads decode them); at least 1."""
    from .config import DEVICE_DEFAULTS

    value = runtime.prefetch
    if value is None:
        kind = "cuda" if str(runtime.device).startswith("cuda") else "cpu"
        value = DEVICE_DEFAULTS[kind]["prefetch"]
    return max(1, int(value))


def _prepared(indices: list[int], index: DatasetIndex, cfg, models, cap) -> Iterator[tuple[int, object]]:
    """Yield ``(i, Prepared | ClipError)`` in order, decoding up to a window of clips ahead."""
    from .clip import prepare

    def job(i):
        try:
            return prepare(i, index.clips[i], cfg, models, cap)
        except ClipError as e:
            return e
        except Exception as e:  # noqa: BLE001 — one bad clip must not stop the run
            log.debug("unexpected error on %s", index.clips[i].video, exc_info=True)
            return ClipError(index.clips[i].video, f"{type(e).__name__}: {e}", "prepare")

    ahead = prefetch_depth(cfg.runtime)
    window: collections.deque[tuple[int, Future]] = collections.deque()
    with ThreadPoolExecutor(ahead) as pool:
        todo = iter(indices)
        for i in todo:
            window.append((i, pool.submit(job, i)))
            if len(window) > ahead * 2:
                j, fut = window.popleft()
                yield j, fut.result()
        while window:
            j, fut = window.popleft()
            yield j, fut.result()


def extract_indices(
    indices: list[int],
    index: DatasetIndex,
    cfg: ExtractConfig,
    writer: CacheWriter,
    cap: Capacity,
    models=None,
    progress: bool = True,
) -> Summary:
    """Process clips ``indices`` in this process and commit each one. Never raises for a bad clip."""
    cfg = cfg.resolved()
    with torch_threads(cfg.runtime.threads):
        return _extract_indices(indices, index, cfg, writer, cap, models, progress)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` for the block (0: leave them), then restored."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _extract_indices(indices, index, cfg, writer, cap, models, progress) -> Summary:
    from tqdm import tqdm

    from .clip import compute_group
    from .models import models_for

    models = models or models_for(cfg)
    inputs = writer.meta().get("inputs") if cfg.inputs.any else None
    summary = Summary(total=len(indices))
    t0 = time.perf_counter()
    bar = tqdm(total=len(indices), unit="clip", disable=not progress, dynamic_ncols=True)
    group: list = []

    def flush():
        for p, outcome in _compute(group, cfg, models, cap, compute_group):
            cid = p.record.clip_id
            if inputs and not isinstance(outcome, ClipError):
                outcome = _with_inputs(p, outcome, cfg, inputs, models.lock)
            if isinstance(outcome, ClipError):
                writer.write_failure(p.index, str(outcome))
                summary.failed += 1
                summary.failures[cid] = str(outcome)
            else:
                writer.write_clip(p.index, outcome)
                summary.done += 1
                summary.frames += p.n_frames
                if outcome.note:
                    summary.notes[cid] = outcome.note
        bar.update(len(group))
        bar.set_postfix(
            frames_s=f"{summary.frames / max(time.perf_counter() - t0, 1e-9):.1f}", failed=summary.failed
        )
        group.clear()

    for i, item in _prepared(indices, index, cfg, models, cap):
        if isinstance(item, ClipError):
            writer.write_failure(i, str(item))
            summary.failed += 1
            summary.failures[index.clips[i].clip_id] = str(item)
            bar.update(1)
            continue
        group.append(item)
        if sum(p.n_frames for p in group) >= cfg.runtime.group_frames:
            flush()
    if group:
        flush()
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _with_inputs(p, result, cfg, inputs: dict, lock):
    """``result`` with the clip's end-to-end inputs, or the ``ClipError`` that stopped them."""
    from .inputs import clip_inputs

    try:
        result.inputs = clip_inputs(p, cfg, inputs, lock)
    except ClipError as e:
        return e
    except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run
        return ClipError(p.record.video, f"{type(e).__name__}: {e}", "inputs")
    result.note = "; ".join(p.notes)
    return result


def _compute(group, cfg, models, cap, compute_group):
    """Run a packed group; if it fails as a whole, rerun clip by clip so only the culprit fails."""
    try:
        with models.lock:
            results = compute_group(group, cfg, models, cap)
        return list(zip(group, results, strict=True))
    except Exception as e:  # noqa: BLE001
        if len(group) == 1:
            err = (
                e
                if isinstance(e, ClipError)
                else ClipError(group[0].record.video, f"{type(e).__name__}: {e}", "encode")
            )
            return [(group[0], err)]
        log.warning("a group of %d clips failed (%s); retrying clip by clip", len(group), e)
        out = []
        for p in group:
            out.extend(_compute([p], cfg, models, cap, compute_group))
        return out


def run_shard(
    cfg_dict: dict,
    index: DatasetIndex,
    indices: list[int],
    url: str,
    storage_options: dict | None,
    cap: tuple[int, int],
) -> Summary:
    """Entry point of a Dask task: process ``indices`` and write them into the store at ``url``."""
    import torch

    if cfg_dict["runtime"]["device"] == "cpu":
        torch.set_num_threads(1)  # one worker process per core: avoid oversubscribing the CPU
    cfg = ExtractConfig.from_dict(cfg_dict)
    writer = CacheWriter(url, storage_options)
    return extract_indices(indices, index, cfg, writer, Capacity(*cap), progress=False)


def run_extraction(
    cfg: ExtractConfig,
    index: DatasetIndex,
    url: str,
    *,
    overwrite: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    storage_options: dict | None = None,
    executor=None,
    progress: bool = True,
    models=None,
) -> Summary:
    """Extract every pending clip of ``index`` into the store at ``url`` and return a summary.

    Idempotent and resumable: committed clips are skipped; failed ones are retried only with
    ``retry_failed``. ``executor`` is a Dask ``Client`` or a ``concurrent.futures`` executor; without
    one, ``runtime.workers``/``runtime.scheduler`` decide, and 0 workers means this process.
    """
    from .models import Models

    cfg = cfg.resolved()
    distributed = executor is not None or bool(cfg.runtime.workers or cfg.runtime.scheduler)
    models = models or Models.build(cfg, device="cpu" if distributed else cfg.runtime.device)
    with StoreLease(url, storage_options):  # one driver per store (see aver.lease)
        from .inputs import ensure_inputs

        writer = _open_store(cfg, index, url, models, overwrite, storage_options)
        cfg = ensure_inputs(writer, cfg, models.dims(cfg)["audio_rate_hz"])
        todo = _pending(writer.status(), retry_failed, limit)
        where = {"executor": executor, "storage_options": storage_options, "progress": progress}
        summary = _run(cfg, index, url, writer, models, todo, distributed, **where)
        _fill_inputs(summary, index, cfg, writer, retry_failed, limit, progress)
        return summary


def _fill_inputs(
    summary: Summary, index, cfg, writer: CacheWriter, retry_failed: bool, limit, progress
) -> None:
    """End-to-end inputs for committed clips that lack them (a store given inputs after its
    features were done), from the raw media and the store's face boxes; failures are reported."""
    from .inputs import fill_inputs

    have = writer.input_status()
    if have is None:
        return
    wanted = (have == PENDING) | ((have == FAILED) if retry_failed else False)
    todo = [int(i) for i in np.flatnonzero((writer.status() == DONE) & wanted)][
        : limit if limit is not None else None
    ]
    if not todo:
        return
    log.info("%s: end-to-end inputs for %d clips extracted before", writer.url, len(todo))
    failures = fill_inputs(todo, index, cfg.resolved(), writer, progress)
    summary.inputs_filled += len(todo) - len(failures)
    summary.failed += len(failures)
    summary.failures.update({cid: f"inputs: {cause}" for cid, cause in failures.items()})
    writer.log_run({"event": "inputs", "filled": len(todo) - len(failures), "failed": len(failures)})


def _pending(status: np.ndarray, retry_failed: bool, limit: int | None) -> list[int]:
    wanted = (status == PENDING) | ((status == FAILED) if retry_failed else False)
    return [int(i) for i in np.flatnonzero(wanted)][: limit if limit is not None else None]


def _run(cfg, index, url, writer, models, todo, distributed, *, executor, storage_options, progress):
    """The pending clips of an open store, here or on the executor; the run log around them."""
    cap = writer.capacity()
    summary = Summary(total=len(index.clips), skipped=int((writer.status() == DONE).sum()))
    writer.log_run({"event": "start", "pending": len(todo), "runtime": cfg.to_dict()["runtime"]})
    t0 = time.perf_counter()
    if todo and not distributed:
        summary.merge(extract_indices(todo, index, cfg, writer, cap, models=models, progress=progress))
    elif todo:
        summary.merge(_run_distributed(todo, index, cfg, url, storage_options, cap, executor, progress))
    summary.seconds = time.perf_counter() - t0
    writer.log_run(
        {"event": "end", "done": summary.done, "failed": summary.failed, "seconds": round(summary.seconds, 2)}
    )
    return summary


def _open_store(cfg, index, url, models, overwrite, storage_options) -> CacheWriter:
    """Create the store's template (capacity planned from container headers), or reopen and check it."""
    from aver import __version__

    from .models import cache_hash

    prov = models.provenance(cfg)
    dims = models.dims(cfg)
    attrs = {
        "dataset": index.name,
        "preset": cfg.preset,
        "tiny": cfg.preset == "tiny",
        "config": cfg.hashed_dict(),
        "config_hash": cache_hash(cfg, prov),
        "models": prov,
        "code_version": _code_version(__version__),
        "libraries": _library_versions(),
        "notes": index.notes,
    }
    fresh = overwrite or CacheWriter.needs_template(url, storage_options)
    cap = plan_capacity(index, cfg, dims["audio_rate_hz"]) if fresh else Capacity(0, 0)
    try:
        return CacheWriter.create_or_open(
            url, index.table(), attrs, cap, dims, overwrite=overwrite, storage_options=storage_options
        )
    except CacheMismatchError as e:
        raise CacheMismatchError(f"{e}{_late_field_hint(cfg, url, storage_options)}") from None


def _late_field_hint(cfg: ExtractConfig, url: str, storage_options) -> str:
    """For a cache made before an option existed: the ``--set`` that continues it as it was made."""
    from aver.layout import ATTRS_KEY, open_root

    from .config import LATE_FIELDS

    old = (open_root(url, "r", storage_options).attrs.get(ATTRS_KEY) or {}).get("config") or {}
    sets = [
        f"--set {sec}.{key}={json.dumps(legacy)}"
        for (sec, key), legacy in LATE_FIELDS.items()
        if key not in (old.get(sec) or {}) and getattr(getattr(cfg, sec), key) != legacy
    ]
    return (
        f" This cache predates those options; to continue it as it was made: {' '.join(sets)}" if sets else ""
    )


def _run_distributed(todo, index, cfg, url, storage_options, cap, executor, progress) -> Summary:
    """Shards of pending clips on ``executor``: a Dask ``Client`` or any ``concurrent.futures``
    executor (process pools need the ``spawn`` start method: torch does not survive ``fork``)."""
    from tqdm import tqdm

    own, saved_env = None, dict(os.environ)
    cfg_dict = cfg.to_dict()
    if executor is None:
        from aver.cluster import connect, local_cluster

        if cfg.runtime.scheduler:
            executor = own = connect(cfg.runtime.scheduler)
        else:
            # one GPU per worker (CUDA_VISIBLE_DEVICES pinned), so each sees its own as "cuda" (#3)
            executor = own = local_cluster(cfg.runtime.workers, cfg.runtime.device)
            if cfg.runtime.device.startswith("cuda"):
                cfg_dict["runtime"]["device"] = "cuda"
    try:
        # several shards per worker keep workers busy when clip costs differ
        n_shards = max(1, min(len(todo), 4 * _worker_count(executor)))
        shards = [[int(i) for i in s] for s in np.array_split(np.asarray(todo), n_shards) if len(s)]
        futures = [
            executor.submit(run_shard, cfg_dict, index, s, url, storage_options, (cap.frames, cap.audio))
            for s in shards
        ]
        total = Summary(total=len(todo))
        with tqdm(total=len(todo), unit="clip", disable=not progress) as bar:
            for fut, shard in zip(futures, shards, strict=True):
                total.merge(fut.result())
                bar.update(len(shard))
        return total
    finally:
        if own is not None:
            cluster = getattr(own, "cluster", None)
            own.close()
            if cluster is not None:
                cluster.close()
            restore_environ(saved_env)


def restore_environ(saved: dict[str, str]) -> None:
    """Undo what starting a Dask cluster wrote into this process's environment (it sets
    ``OMP_NUM_THREADS=1`` and friends for its workers, and later subprocesses would inherit them)."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _worker_count(executor) -> int:
    if hasattr(executor, "scheduler_info"):  # dask.distributed.Client
        return max(1, len(executor.scheduler_info().get("workers", {})))
    return max(1, int(getattr(executor, "_max_workers", 1)))


def _code_version(version: str) -> str:
    import subprocess
    from pathlib import Path

    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"aver {version}" + (f" ({rev})" if rev else "")


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "torch",
        "torchvision",
        "timm",
        "transformers",
        "facenet-pytorch",
        "av",
        "opencv-python-headless",
        "zarr",
        "numpy",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
