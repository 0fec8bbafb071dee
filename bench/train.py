"""Training throughput on a cache of RAVDESS size (synthetic values, realistic lengths).

    python bench/train.py [--clips 1440] [--preset paper] [--device cpu] [--batches 20]

Builds (once, in --workdir) a cache with 1,440 clips of 3-5.3 s at 29.97 fps (90-160 frames, 1408-d
frame and flow features) and 50 Hz 1024-d audio, then times training steps of DE-III and prints:
clips/s, the share of step time spent outside the model's forward/backward (batch assembly,
padding, host-to-device copies), the time to load the fold into memory, and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build_cache(url: str, n: int, seed: int = 0) -> None:
    """A cache with the real layout and RAVDESS-like lengths, filled with random features."""
    from extract.datasets.base import ClipRecord, DatasetIndex
    from extract.datasets.folds import round_robin_groups, speaker_folds
    from extract.store import CacheWriter, Capacity, ClipResult

    rng = np.random.default_rng(seed)
    clips = [
        ClipRecord(clip_id=f"clip{i:05d}", video=f"/x/{i}.mp4", speaker=f"{i % 24 + 1:02d}", label=i % 8)
        for i in range(n)
    ]
    speakers = [c.speaker for c in clips]
    index = DatasetIndex(
        "bench",
        "/x",
        clips,
        classes=[f"c{k}" for k in range(8)],
        folds=speaker_folds(speakers, round_robin_groups(speakers, 5)),
        folds_source="bench",
    )
    dims = {"image": 1408, "audio": 1024, "audio_layers": 1, "audio_rate_hz": 50.0}
    attrs = {
        "config_hash": "bench",
        "config": {},
        "dataset": "bench",
        "preset": "bench",
        "tiny": False,
        "classes": index.classes,
        "targets": [],
        "dims": dims,
        "models": {},
        "folds_source": "bench",
        "code_version": "bench",
        "notes": [],
    }
    w = CacheWriter.create_or_open(url, index, attrs, Capacity(frames=162, audio=268), dims)
    for i in range(n):
        seconds = rng.uniform(3.0, 5.3)
        t, a = int(seconds * 29.97), int(seconds * 50)
        w.write_clip(
            i,
            ClipResult(
                rng.standard_normal((t, 1408), np.float32).astype(np.float16),
                rng.standard_normal((t - 1, 1408), np.float32).astype(np.float16),
                rng.standard_normal((a, 1, 1024), np.float32).astype(np.float16),
                np.arange(t, dtype=np.float32) / 29.97,
                np.zeros((t, 4), np.float32),
                np.ones(t, np.float32),
                np.ones(t, bool),
                29.97,
            ),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1440)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--variant", default="de3")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20, help="training steps timed (after 2 warm-up steps)")
    ap.add_argument("--workdir", default="/tmp/aver-bench-train")
    args = ap.parse_args()

    from train.cache import FeatureCache
    from train.config import preset_train_config
    from train.data import load_clips
    from train.trainer import Task, build_model, train_epoch

    url = str(Path(args.workdir) / f"ravdess_size_{args.clips}.zarr")
    if not Path(url).exists():
        t0 = time.perf_counter()
        build_cache(url, args.clips)
        print(f"built {url} in {time.perf_counter() - t0:.0f} s")
    cache = FeatureCache(url)
    t0 = time.perf_counter()
    train_idx = cache.split_indices(1, "train")
    clips = load_clips(cache, train_idx, preset_train_config(args.preset, cache=url).data)
    load_s = time.perf_counter() - t0
    n_steps = args.batches + 2
    clips = clips[: n_steps * args.batch_size]
    cfg = preset_train_config(
        args.preset, cache=url, device=args.device, data={"batch_size": args.batch_size}
    )
    task = Task.from_cache(cache)
    model, _ = build_model(args.variant, cache.meta["dims"], len(task.names), cfg.model)
    model.to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    train_epoch(model, clips[: 2 * args.batch_size], cfg, task, opt, epoch=0)  # warm-up
    stats = train_epoch(model, clips[2 * args.batch_size :], cfg, task, opt, epoch=1)
    step_s = stats["data_s"] + stats["model_s"]
    if args.device.startswith("cuda"):
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU)"
        dev = torch.cuda.get_device_name(0)
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"
        dev = "CPU"
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"device: {dev}, torch {torch.__version__}; model {args.variant} ({args.preset}), {n_params / 1e6:.1f} M params"
    )
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| train clips in fold 1 | {len(train_idx)} |")
    print(f"| load fold 1 train split into memory | {load_s:.1f} s ({len(train_idx) / load_s:.0f} clips/s) |")
    print(f"| training throughput | {stats['clips'] / step_s:.1f} clips/s (batch {args.batch_size}) |")
    print(f"| time outside forward/backward | {100 * stats['data_s'] / step_s:.1f} % |")
    print(f"| peak memory | {peak} |")


if __name__ == "__main__":
    main()
