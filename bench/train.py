"""Training throughput on a cache of RAVDESS size (synthetic values, realistic lengths).

    python bench/train.py [--clips 1440] [--preset paper] [--device cpu] [--batches 20]
    python bench/train.py --model mocanu2023|avtca [--preset paper] [--batch-size 16] [--batches 5]

Builds (once, in --workdir) a cache with 1,440 clips of 3-5.3 s at 29.97 fps (90-160 frames, 1408-d
frame and flow features) and 50 Hz 1024-d audio, then times training steps of DE-III and prints:
clips/s, the share of step time spent outside the model's forward/backward (batch assembly,
padding, host-to-device copies), the time to load the fold into memory, and peak memory.

With ``--model mocanu2023`` or ``avtca`` it times the end-to-end systems instead, on clips of RAVDESS
length (3-5.3 s of 16 kHz audio) whose cached crops have the model's frame count and size (96 or 15
frames at 224 px in the paper presets): as many clips as the timed steps use (a step's cost does not
depend on how many clips the cache holds), with uint8 crops moved to the device per batch,
augmentation there, and AMP on CUDA.
"""

from __future__ import annotations

import argparse
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


def bench_end_to_end(args) -> None:
    """Training steps of ``args.model`` at ``args.preset`` size (see the module docstring)."""
    from aver.cache import FeatureCache
    from aver.testing import add_toy_inputs, build_feature_cache
    from aver.train.config import make_config
    from aver.train.e2e import load_input_clips
    from aver.train.recipe import Run
    from aver.train.systems import build_end_to_end
    from aver.train.tasks import Task

    model, _ = build_end_to_end(args.model, args.preset, "full", {}, RAVDESS_CLASSES)
    spec, n = model.input_spec, (args.batches + 2) * args.batch_size
    url = str(Path(args.workdir) / f"{args.model}_{args.preset}_{n}.zarr")
    if not Path(url).exists():
        build_feature_cache(
            url, n_clips=n, n_classes=8, class_names=RAVDESS_CLASSES, n_speakers=24, separation=0
        )
        add_toy_inputs(url, crop_frames=spec["n_frames"], crop_size=spec["image_size"], seconds=(3.0, 5.3))
    cache = FeatureCache(url)
    t0 = time.perf_counter()
    clips = load_input_clips(cache, list(range(n)), spec["n_frames"])
    load_s = time.perf_counter() - t0
    cfg = make_config(
        args.preset, {"data.batch_size": args.batch_size}, cache=url, device=args.device, system=args.model
    )
    model.to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    run = Run(cfg, Path(args.workdir), cache, Task.from_cache(cache), {}, model, {}, optimizer=opt)
    _timed_epochs(run, clips, args, f"{args.model} full ({args.preset})", load_s, n)


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
    print(f"device: {dev}, torch {torch.__version__}; model {name}, {n_params / 1e6:.1f} M params")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| clips loaded | {n_loaded} in {load_s:.1f} s ({n_loaded / max(load_s, 1e-9):.0f} clips/s) |")
    print(f"| training throughput | {stats['clips'] / step_s:.2f} clips/s (batch {args.batch_size}) |")
    print(f"| time outside forward/backward | {100 * stats['data_s'] / step_s:.1f} % |")
    print(f"| peak memory | {peak} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1440)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--variant", default="de3")
    ap.add_argument("--model", default="de3", choices=["de3", "mocanu2023", "avtca"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20, help="training steps timed (after 2 warm-up steps)")
    ap.add_argument("--workdir", default="/tmp/aver-bench-train")
    args = ap.parse_args()
    if args.model != "de3":
        bench_end_to_end(args)
        return

    from aver.cache import FeatureCache
    from aver.train.config import make_config
    from aver.train.data import load_clips
    from aver.train.models.variants import build_model
    from aver.train.recipe import Run
    from aver.train.tasks import Task

    url = str(Path(args.workdir) / f"ravdess_size_{args.clips}.zarr")
    if not Path(url).exists():
        t0 = time.perf_counter()
        build_cache(url, args.clips)
        print(f"built {url} in {time.perf_counter() - t0:.0f} s")
    cache = FeatureCache(url)
    t0 = time.perf_counter()
    train_idx = cache.split_indices(1, "train")
    clips = load_clips(cache, train_idx, make_config(args.preset, cache=url).data)
    load_s = time.perf_counter() - t0
    n_steps = args.batches + 2
    clips = clips[: n_steps * args.batch_size]
    cfg = make_config(args.preset, {"data.batch_size": args.batch_size}, cache=url, device=args.device)
    task = Task.from_cache(cache)
    model, _ = build_model(args.variant, cache.dims, len(task.names), cfg.model)
    model.to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = Run(cfg, Path(args.workdir), cache, task, {}, model, {}, optimizer=opt)
    print(f"train clips in fold 1: {len(train_idx)}")
    _timed_epochs(run, clips, args, f"{args.variant} ({args.preset})", load_s, len(train_idx))


if __name__ == "__main__":
    main()
