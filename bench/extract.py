"""Extraction throughput: each stage alone, then end to end, on the synthetic corpus.

    python bench/extract.py [--preset tiny] [--device cpu] [--flow dis] [--actors 3] [--seconds 2]
    python bench/extract.py --preset paper --weights DIR --flow raft_large --size 1280x720 --json r.json
    python bench/extract.py --long [5 60 300]     # peak memory against clip length and frame size
    python bench/extract.py --long 5 --hires 1920x1080 3840x2160 --hires-seconds 2
    python bench/extract.py --detect --size 640x480  # face boxes: detection stride / resolution vs IoU

Prints one table: frames/s of every stage run alone over the same clips (decode, MTCNN, crop,
flow, frame encoder, flow image + encoder, audio, store write), end-to-end frames/s of a real
``run_extraction`` into a fresh store, and the ratio of end-to-end to the slowest stage alone
(1.0 = the pipeline runs as fast as its bottleneck allows). The pipeline decodes every clip twice
(detection pass, crop pass), so "decode" is listed per pass. Never asserted on in tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from aver.extract.datasets import DatasetOptions, load_dataset  # noqa: E402
from aver.extract.models import Models  # noqa: E402
from aver.extract.presets import preset_config  # noqa: E402
from aver.overrides import apply_overrides  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def stage_times(cfg, index, models: Models) -> tuple[dict[str, float], int]:
    """Seconds per stage, each run alone over all clips; returns (times, total frames)."""
    from aver.extract.faces import crop_faces, smooth_boxes, track_face
    from aver.extract.flow import flow_pairs, flow_to_image, normalise_flow
    from aver.extract.media import iter_video_frames, load_audio

    rt, dev = cfg.runtime, cfg.runtime.device
    t = dict.fromkeys(
        [
            "decode (per pass)",
            "MTCNN detect",
            "crop (roi_align)",
            "optical flow",
            "encode frames",
            "flow images + encode",
            "audio load + wav2vec2",
        ],
        0.0,
    )
    decoded, total = [], 0
    for rec in index.clips:
        batches, s = timed(dev, lambda rec=rec: list(iter_video_frames(rec.video, rt.decode_batch)))
        t["decode (per pass)"] += s
        frames = np.concatenate([b for b, _ in batches])
        decoded.append(frames)
        total += len(frames)
    crops_all = []
    for frames in decoded:
        dets, s = timed(
            dev,
            lambda f=frames: [
                d
                for k in range(0, len(f), rt.detect_batch)
                for d in models.detector.detect(f[k : k + rt.detect_batch])
            ],
        )
        t["MTCNN detect"] += s
        track = track_face(dets, frames.shape[1:3], "bench")
        boxes = smooth_boxes(track.boxes, cfg.face.smooth_window, cfg.face.margin, frames.shape[1:3])
        gpu_frames = torch.from_numpy(frames).to(dev)
        crops, s = timed(dev, lambda g=gpu_frames, b=boxes: crop_faces(g, b, cfg.face.crop_size))
        t["crop (roi_align)"] += s
        crops_all.append(crops)
    crops = torch.cat(crops_all)
    _, s = timed(dev, lambda: models.image.encode_batched(crops, rt.image_batch))
    t["encode frames"] += s
    flows = []
    for c in crops_all:
        idx = flow_pairs(len(c), cfg.flow.window, cfg.flow.stride).to(c.device)
        f, s = timed(
            dev,
            lambda c=c, idx=idx: torch.cat(
                [
                    models.flow(c[idx[k : k + rt.flow_batch, 0]], c[idx[k : k + rt.flow_batch, 1]])
                    for k in range(0, len(idx), rt.flow_batch)
                ]
            ),
        )
        t["optical flow"] += s
        flows.append(f)
    _, s = timed(
        dev,
        lambda: models.image.encode_batched(
            torch.cat(
                [
                    flow_to_image(normalise_flow(f, cfg.flow.eps, cfg.flow.sigma), cfg.flow.image_clip)
                    for f in flows
                ]
            ),
            rt.image_batch,
        ),
    )
    t["flow images + encode"] += s
    for rec in index.clips:
        _, s = timed(dev, lambda rec=rec: models.audio(load_audio(rec.audio or rec.video, 16000)))
        t["audio load + wav2vec2"] += s
    return t, total


def write_time(cfg, index, models: Models, tmp: Path) -> float:
    """Seconds to commit every clip (random features of the real shapes) into a fresh store."""
    from aver.store import CacheWriter, Capacity, ClipResult

    dims = models.dims(cfg)
    cap = Capacity(frames=64, audio=128)
    w = CacheWriter.create_or_open(
        str(tmp / "write.zarr"), index.table(), {"config_hash": "bench", "config": {}}, cap, dims
    )
    rng = np.random.default_rng(0)
    n = 50
    r = ClipResult(
        rng.standard_normal((n, dims["image"])).astype(np.float16),
        rng.standard_normal((n - 1, dims["image"])).astype(np.float16),
        rng.standard_normal((100, dims["audio_layers"], dims["audio"])).astype(np.float16),
        np.arange(n, dtype=np.float32),
        np.zeros((n, 4), np.float32),
        np.ones(n, np.float32),
        np.ones(n, bool),
        25.0,
    )
    t0 = time.perf_counter()
    for i in range(len(index.clips)):
        w.write_clip(i, r)
    return (time.perf_counter() - t0) * 1.0, n * len(index.clips)


LONG_CHILD = """
import json, resource, sys, time
from aver.extract.api import extract_dataset
t0 = time.perf_counter()
s = extract_dataset("folder", labels=sys.argv[1], cache=sys.argv[2], preset="tiny", limit=1, progress=False,
                    overrides={"runtime.device": sys.argv[3]})
print(json.dumps({"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "seconds": time.perf_counter() - t0, "frames": s.frames, "failed": s.failed}))
"""


def write_long_clip(path: Path, seconds: float, fps: int = 25, width: int = 320, height: int = 240) -> None:
    """A real H.264 + AAC clip of ``seconds``, written frame by frame (a 5 s synthetic clip, looped),
    so that writing it never holds the whole video in memory."""
    import av

    from aver.extract.synthetic import render_audio, render_frames

    frames = render_frames(5 * fps, fps, width, height, actor=1, emotion="happy")
    audio = render_audio(5.0, 48000, actor=1, emotion="happy")
    with av.open(str(path), mode="w", format="mp4") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"preset": "veryfast", "crf": "20"}
        a = c.add_stream("aac", rate=48000, layout="mono")
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            frame.pts = i
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
        for k in range(int(seconds)):
            chunk = audio[(k % 5) * 48000 : (k % 5 + 1) * 48000][None].astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, k * 48000
            c.mux(a.encode(af))
        c.mux(a.encode(None))


def write_hires_clip(path: Path, seconds: float, width: int, height: int, fps: int = 25) -> None:
    """A real H.264 + AAC clip at ``width`` x ``height`` of a real face photo (the Grace Hopper portrait
    that ships with matplotlib, as ``synthetic.write_photo_clip``) drifting across the frame, encoded
    frame by frame so that writing a 4K clip never holds the whole video in memory."""
    import av
    import matplotlib.cbook
    from PIL import Image

    from aver.extract.synthetic import render_audio

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    scale = 0.9 * height / img.height
    face = np.asarray(img.resize((int(img.width * scale), int(img.height * scale)), Image.BILINEAR))
    n = max(int(round(seconds * fps)), 2)
    y, span = (height - face.shape[0]) // 2, max(width - face.shape[1], 0)
    audio = render_audio(n / fps, 48000, emotion="happy").astype(np.float32)
    with av.open(str(path), mode="w", format="mp4") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"preset": "ultrafast", "crf": "23"}
        a = c.add_stream("aac", rate=48000, layout="mono")
        for i in range(n):
            rgb = np.full((height, width, 3), 96, dtype=np.uint8)
            x = int(round(span * (0.35 + 0.3 * i / max(n - 1, 1))))
            rgb[y : y + face.shape[0], x : x + face.shape[1]] = face[:, : width - x]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
        af = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        c.mux(a.encode(af))
        c.mux(a.encode(None))


def _child_peak(table: Path, cache: Path, device: str) -> dict:
    """Run ``LONG_CHILD`` (one ``aver extract`` in a fresh process) and return its JSON line."""
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", LONG_CHILD, str(table), str(cache), device],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def resolution_memory(sizes: list[str], seconds: float, device: str) -> None:
    """Peak RSS of a whole ``aver extract`` process (tiny preset) on one face clip of each frame size:
    with frames held at full resolution it grows with width x height x frames; bounded, it should not."""
    print(f"one {seconds:g} s face clip at 25 fps per frame size")
    print("| frame size | frames | peak RSS (process) | wall |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_long_clip(tmp / "short.mp4", 1.0)  # two more speakers for the folds; not extracted (limit=1)
        for size in sizes:
            width, height = (int(v) for v in size.split("x"))
            write_hires_clip(tmp / f"{size}.mp4", seconds, width, height)
            table = tmp / f"clips{size}.csv"
            table.write_text(f"id,video,speaker\na,{size}.mp4,s1\nb,short.mp4,s2\nc,short.mp4,s3\n")
            r = _child_peak(table, tmp / f"cache{size}", device)
            failed = " (FAILED)" if r["failed"] else ""
            print(f"| {size}{failed} | {r['frames']} | {r['rss_gib']:.2f} GiB | {r['seconds']:.0f} s |")


def long_clip_memory(durations: list[float], device: str) -> None:
    """Peak RSS of a whole ``aver extract`` process (tiny preset) on one clip of each duration."""
    print(f"machine: {machine()}")
    print("| clip length | frames | peak RSS (process) | wall |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_long_clip(tmp / "short.mp4", 1.0)
        for seconds in durations:
            write_long_clip(tmp / "long.mp4", seconds)
            table = tmp / f"clips{seconds:g}.csv"
            table.write_text("id,video,speaker\na_long,long.mp4,s1\nb,short.mp4,s2\nc,short.mp4,s3\n")
            r = _child_peak(table, tmp / f"cache{seconds:g}", device)
            print(f"| {seconds:g} s | {r['frames']} | {r['rss_gib']:.2f} GiB | {r['seconds']:.0f} s |")


def detect_accuracy(cfg, index, combos: list[tuple[int, int]]) -> None:
    """Box accuracy and speed of face detection at a stride and a detection resolution: IoU of the
    smoothed crop boxes against every-frame detection at 640 px, and detected frames/s."""
    import contextlib
    import dataclasses

    from aver.extract.faces import FaceDetector, detect_frames, smooth_boxes, track_face
    from aver.extract.media import iter_video_frames

    clips = [np.concatenate([f for f, _ in iter_video_frames(c.video, 256)]) for c in index.clips]
    results = {}
    for every, side in [(1, 640), *combos]:
        face = dataclasses.replace(cfg.face, detect_every=every, detect_max_side=side)
        det = FaceDetector(face, cfg.runtime.device)
        boxes, seconds, frames = [], 0.0, 0
        for f in clips:
            dets, s = timed(
                cfg.runtime.device,
                lambda f=f, det=det, every=every: detect_frames(
                    det, f, 0, every, cfg.runtime.detect_batch, contextlib.nullcontext()
                ),
            )
            seconds, frames = seconds + s, frames + len(f)
            track = track_face(dets, f.shape[1:3], "bench")
            boxes.append(smooth_boxes(track.boxes, face.smooth_window, face.margin, f.shape[1:3]))
        results[(every, side)] = (np.concatenate(boxes), frames / seconds)
    ref = results[(1, 640)][0]
    print(f"machine: {machine()}")
    h, w = clips[0].shape[1:3]
    print(
        f"{len(clips)} clips, {sum(len(c) for c in clips)} frames at {w}x{h}; IoU against every frame at 640 px"
    )
    print("| detect every | detect side | frames/s | mean IoU | min IoU |")
    print("| --- | --- | --- | --- | --- |")
    for (every, side), (b, fps) in results.items():
        iou = _iou(ref, b)
        print(f"| {every} | {side} | {fps:.1f} | {iou.mean():.3f} | {iou.min():.3f} |")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x2, y2 = np.minimum(a[:, 2], b[:, 2]), np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--flow",
        help="flow backend override: dis, raft (= raft_large), raft_large, raft_small, perceiver; the "
        "preset's flow weights are dropped (random RAFT) unless --weights or --set flow.weights= gives them",
    )
    ap.add_argument(
        "--weights",
        type=Path,
        help="a folder of bench/paper_weights.py (written when missing): the paper architectures' random "
        "weights in the real formats, for the face, audio and flow models",
    )
    ap.add_argument("--json", help="also write the figures to this JSON file (bench/gpu_check.py reads it)")
    ap.add_argument("--actors", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--clips", type=int, help="only the first N clips of the corpus (default: all)")
    ap.add_argument("--set", action="append", default=[], help="config overrides, section.key=value")
    ap.add_argument(
        "--long",
        nargs="*",
        type=float,
        metavar="SECONDS",
        help="peak RSS of extracting one clip of each length instead (default 5 60 300)",
    )
    ap.add_argument(
        "--hires",
        nargs="*",
        default=["1280x720", "1920x1080", "3840x2160"],
        metavar="WxH",
        help="with --long: also peak RSS on one face clip of each frame size (none: skip)",
    )
    ap.add_argument("--hires-seconds", type=float, default=2.0, help="length of the --hires clips")
    ap.add_argument("--size", default="320x240", help="synthetic frame size WxH")
    ap.add_argument(
        "--detect",
        action="store_true",
        help="face detection only: IoU and frames/s at detection strides and resolutions",
    )
    args = ap.parse_args()
    if args.long is not None:
        long_clip_memory(args.long or [5.0, 60.0, 300.0], args.device)
        if args.hires:
            resolution_memory(args.hires, args.hires_seconds, args.device)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import json

    sets = [f"runtime.device={json.dumps(args.device)}", *_weight_sets(args), *args.set]
    cfg = apply_overrides(preset_config(args.preset, "synthetic"), sets).resolved()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        width, height = (int(v) for v in args.size.split("x"))
        options = {"n_actors": args.actors, "clips_per_emotion": 1, "seconds": args.seconds}
        options.update(width=width, height=height)
        index = load_dataset("synthetic", DatasetOptions(data=tmp / "corpus", options=options))
        if args.clips:  # the first N clips, their fold columns with them
            import dataclasses

            index = dataclasses.replace(
                index, clips=index.clips[: args.clips], folds=index.folds[:, : args.clips]
            )
        if args.detect:
            combos = [(2, 640), (3, 640), (5, 640), (1, 480), (1, 320), (3, 320)]
            detect_accuracy(cfg, index, combos)
            return
        models = Models.build(cfg)
        stage_times(cfg, index, models)  # warm-up: first calls pay for allocator and kernel set-up
        times, frames = stage_times(cfg, index, models)
        w_s, w_frames = write_time(cfg, index, models, tmp)
        from aver.extract.pipeline import run_extraction

        summary = run_extraction(cfg, index, str(tmp / "e2e.zarr"), progress=False)
        e2e = summary.frames / summary.seconds
    rows = [(name, frames / s) for name, s in times.items()] + [("store write", w_frames / w_s)]
    slowest = min(rows, key=lambda r: r[1])
    print(f"machine: {machine()}")
    print(
        f"preset {cfg.preset}, flow {cfg.flow.backend}, image {cfg.image.arch}@{cfg.image.input_size}, "
        f"device {cfg.runtime.device}; {len(index.clips)} clips, {frames} frames"
    )
    print(f"| {'stage':24} | {'frames/s':>10} |")
    print(f"| {'-' * 24} | {'-' * 10} |")
    for name, fps in rows:
        print(f"| {name:24} | {fps:10.1f} |")
    print(f"| {'END TO END':24} | {e2e:10.1f} |")
    print(
        f"slowest stage alone: {slowest[0]} ({slowest[1]:.1f} frames/s); "
        f"end-to-end / slowest = {e2e / slowest[1]:.2f}"
    )
    if args.json:
        result = {"flow": args.flow or cfg.flow.backend, "size": args.size, "frames": frames}
        result.update(
            stages=dict(rows), end_to_end=e2e, slowest=slowest[0], e2e_over_slowest=e2e / slowest[1]
        )
        Path(args.json).write_text(json.dumps(result, indent=1))


def _weight_sets(args) -> list[str]:
    """``--set`` items for ``--flow`` and ``--weights``: the backend (and RAFT's variant), and weights
    that fit it. A preset's flow weights belong to its own backend (the paper preset names the
    Perceiver hub id), so another backend starts from none (random RAFT) unless ``--weights``
    supplies a file of the right format (issue 21 #9)."""
    import json

    sets = []
    flow = {"raft": "raft_large"}.get(args.flow, args.flow)
    if flow:
        backend, _, variant = flow.partition("_")
        sets += [f"flow.backend={json.dumps(backend)}", "flow.weights=null"]
        if variant:
            sets.append(f"flow.variant={json.dumps(variant)}")
    if args.weights:
        from bench.paper_weights import flow_weights, paper_weights

        face, audio = paper_weights(args.weights)
        sets += [f"image.weights={json.dumps(str(face))}", f"audio.model={json.dumps(str(audio))}"]
        if flow and flow != "dis":
            sets.append(f"flow.weights={json.dumps(str(flow_weights(args.weights, flow)))}")
    return sets


if __name__ == "__main__":
    main()
