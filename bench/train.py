"""Training throughput on a cache of RAVDESS size (synthetic values, realistic lengths).

    python bench/train.py [--clips 1440] [--preset paper] [--device cpu] [--batches 20]
    python bench/train.py --model mocanu2023|avtca [--preset paper] [--batch-size 16] [--batches 5]
    python bench/train.py --model mocanu2023 --coverage-only

Builds (once, in --workdir) a cache with 1,440 clips of 3-5.3 s at 29.97 fps (90-160 frames, 1408-d
frame and flow features) and 50 Hz 1024-d audio, then times training steps of DE-III and prints:
clips/s, the share of step time spent outside the model's forward/backward (batch assembly,
padding, host-to-device copies), the time to load the fold into memory, and peak memory.

With ``--model mocanu2023`` or ``avtca`` it times the end-to-end systems instead, on clips of RAVDESS
length (3-5.3 s of 16 kHz audio) whose cached crops have the model's frame count and size (96 or 15
frames at 224 px in the paper presets): as many clips as the timed steps use (a step's cost does not
depend on how many clips the cache holds), with uint8 crops moved to the device per batch,
augmentation there, and AMP on CUDA.

``--model mocanu2023`` first prints the share of anchors whose eq. 16 term (eq. 13 for classes without
a related class) has partners in their batch under ``metric_batch_sampler``, for the RAVDESS and CREMA-D
class sets at the paper's batch size 16 and the tiny preset's (``--coverage-only``: only that).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def build_cache(url: str, n: int, seed: int = 0) -> None:
    """A cache with the real layout and RAVDESS-like lengths (3-5.3 s at 29.97 fps), random features."""
    from aver.testing import build_feature_cache

    build_feature_cache(
        url,
        n_clips=n,
        n_classes=8,
        d_image=1408,
        d_audio=1024,
        n_speakers=24,
        frames=(90, 160),
        fps=29.97,
        separation=0.0,
        seed=seed,
        dataset="bench",
        config_hash="bench",
    )


RAVDESS_CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
CREMA_CLASSES = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
# Section 4.1: RAVDESS 1440 clips (neutral: normal intensity only, half the others); CREMA-D 7442
COVERAGE_SETS = {
    "RAVDESS": (RAVDESS_CLASSES, [96] + [192] * 7),
    "CREMA-D": (CREMA_CLASSES, [1271, 1271, 1271, 1271, 1087, 1271]),
}


def metric_coverage(system, epochs: int = 3) -> None:
    """Mean share of anchors with a non-empty eq. 16 (or eq. 13) term per batch, over ``epochs``, in
    the batches of ``system.batch_sampler`` (paper and tiny batch sizes)."""
    import numpy as np

    from aver.train.metric_losses import anchor_coverage
    from aver.train.system import DataSpec

    print("| class set | clips | batch | batches / epoch | anchors covered (mean, worst batch) | repeats |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (classes, counts) in COVERAGE_SETS.items():
        config = system.make_config("paper", system.default_variant, {}, DataSpec(tuple(classes)))
        labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
        sizes = sorted(
            {int(system.training(p)["data"]["batch_size"]) for p in ("paper", "tiny")}, reverse=True
        )
        for bs in sizes:
            sampler = system.batch_sampler(config, labels, classes, bs, 0)
            cover, drawn = [], 0
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                for b in sampler:
                    cover.append(anchor_coverage(labels[b], classes))
                    drawn += len(b)
            print(
                f"| {name} | {len(labels)} | {bs} | {len(sampler)} | {100 * np.mean(cover):.1f} % "
                f"({100 * min(cover):.0f} %) | {100 * (drawn / (epochs * len(labels)) - 1):.1f} % |"
            )
            if not sampler.guarantee:
                print(f"|  |  |  |  | {sampler.summary} |  |")


def _setup(args, url: str):
    """A ``Run`` of ``args.model`` / ``args.variant`` on ``url``, built through the system contract."""
    from aver.cache import FeatureCache
    from aver.train.config import make_config
    from aver.train.recipe import Run, build_system
    from aver.train.tasks import Task

    cfg = make_config(
        args.preset,
        {"data.batch_size": args.batch_size},
        cache=url,
        device=args.device,
        system=args.model,
        variant=args.variant,
    )
    cache = FeatureCache(url)
    task = Task.from_cache(cache)
    system, config, model = build_system(cfg, cache, task)
    model.to(args.device)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = Run(cfg, Path(args.workdir), cache, task, {}, model, {}, system, config, optimizer=optimizer)
    run.spec = system.input_spec(config)
    return run


def bench_end_to_end(args, system) -> None:
    """Training steps of a system that trains on crops and waveforms, at ``args.preset`` size."""
    from aver.testing import add_toy_inputs, build_feature_cache
    from aver.train.e2e import load_input_clips
    from aver.train.system import DataSpec

    config = system.make_config(
        args.preset, args.variant or system.default_variant, {}, DataSpec(tuple(RAVDESS_CLASSES))
    )
    spec, n = system.input_spec(config), (args.batches + 2) * args.batch_size
    url = str(Path(args.workdir) / f"{args.model}_{args.preset}_{n}.zarr")
    if not Path(url).exists():
        build_feature_cache(
            url, n_clips=n, n_classes=8, class_names=RAVDESS_CLASSES, n_speakers=24, separation=0
        )
        add_toy_inputs(url, crop_frames=spec.n_frames, crop_size=spec.image_size, seconds=(3.0, 5.3))
    run = _setup(args, url)
    t0 = time.perf_counter()
    clips = load_input_clips(run.cache, list(range(n)), spec.n_frames)
    if run.cfg.resident and args.device != "cpu":  # as setup_data does: the fold lives on the device
        from aver.train.e2e import move_input_clips

        move_input_clips(clips, args.device)
    load_s = time.perf_counter() - t0
    _timed_epochs(run, clips, args, f"{args.model} {run.cfg.variant} ({args.preset})", load_s, n)


def _standardise_and_place(run, clips, device: str) -> None:
    """What ``recipe.setup_data`` does to a fold: training statistics applied and, with ``resident``
    on a GPU, the features moved to the device, so the timed steps assemble batches there."""
    from aver.train.data import FeatureStats, move_clips

    stats = FeatureStats.from_clips(clips) if run.cfg.data.standardise else FeatureStats.identity(clips)
    stats.apply(clips)
    if run.cfg.resident and device != "cpu":
        move_clips(clips, device)


def _timed_epochs(run, clips, args, name: str, load_s: float, n_loaded: int) -> None:
    from aver.train.recipe import train_epoch

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run.clips["train"] = clips[: 2 * args.batch_size]
    train_epoch(run, epoch=0)  # warm-up
    run.clips["train"] = clips[2 * args.batch_size :]
    stats = train_epoch(run, epoch=1)
    step_s = stats["data_s"] + stats["model_s"]
    if args.device.startswith("cuda"):
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU)"
        dev = torch.cuda.get_device_name(0)
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"
        dev = "CPU"
    n_params = sum(p.numel() for p in run.model.parameters())
    rate = stats["clips"] / step_s
    fold_s = n_loaded * run.cfg.epochs / rate
    if args.json:
        result = {
            "model": name,
            "device": dev,
            "clips_per_s": rate,
            "outside_share": stats["data_s"] / step_s,
        }
        result.update(peak_memory=peak, train_clips=n_loaded, epochs=run.cfg.epochs, fold_s=fold_s)
        result.update(load_s=load_s, params_m=n_params / 1e6, resident=run.cfg.resident and dev != "CPU")
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"device: {dev}, torch {torch.__version__}; model {name}, {n_params / 1e6:.1f} M params")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| clips loaded | {n_loaded} in {load_s:.1f} s ({n_loaded / max(load_s, 1e-9):.0f} clips/s) |")
    print(f"| training throughput | {stats['clips'] / step_s:.2f} clips/s (batch {args.batch_size}) |")
    print(f"| time outside forward/backward | {100 * stats['data_s'] / step_s:.1f} % |")
    print(f"| peak memory | {peak} |")
    print(f"| one fold ({n_loaded} training clips × {run.cfg.epochs} epochs, estimated) | {fold_s:.0f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1440)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--variant", help="default: the system's full model")
    ap.add_argument("--model", default="de3", help="a registered system (aver variants lists them)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20, help="training steps timed (after 2 warm-up steps)")
    ap.add_argument("--workdir", default="/tmp/aver-bench-train")
    ap.add_argument("--json", help="also write the figures to this JSON file (bench/gpu_check.py reads it)")
    ap.add_argument(
        "--coverage-only",
        action="store_true",
        help="a system with its own batch sampler: its coverage table only",
    )
    args = ap.parse_args()
    from aver.train.system import FEATURES, System
    from aver.train.systems import SYSTEMS

    system = SYSTEMS.get(args.model)
    if type(system).batch_sampler is not System.batch_sampler:  # a class-composition sampler
        metric_coverage(system)
        if args.coverage_only:
            return
    if system.trains_on != FEATURES:
        bench_end_to_end(args, system)
        return

    from aver.train.data import load_clips

    url = str(Path(args.workdir) / f"ravdess_size_{args.clips}.zarr")
    if not Path(url).exists():
        t0 = time.perf_counter()
        build_cache(url, args.clips)
        print(f"built {url} in {time.perf_counter() - t0:.0f} s")
    run = _setup(args, url)
    t0 = time.perf_counter()
    train_idx = run.cache.split_indices(1, "train")
    clips = load_clips(run.cache, train_idx, run.cfg.data)
    _standardise_and_place(run, clips, args.device)
    load_s = time.perf_counter() - t0
    clips = clips[: (args.batches + 2) * args.batch_size]
    print(f"train clips in fold 1: {len(train_idx)}")
    _timed_epochs(run, clips, args, f"{run.cfg.variant} ({args.preset})", load_s, len(train_idx))


if __name__ == "__main__":
    main()
