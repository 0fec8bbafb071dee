"""aver against a VAVL-style per-frame script, side by side on the same clips and weights.

    python bench/baseline.py [--clips 8] [--seconds 2] [--size 640x480] [--aver-set runtime.workers=2]

The baseline is the style of the VAVL release and its peers: for every frame one MTCNN call on the
full frame, a crop, and one EfficientNet-B2 forward at batch 1 (NCHW); DIS flow between adjacent
crops, its colour-wheel image and another batch-1 forward; wav2vec2 once per clip; one ``.npy``
per clip. aver runs ``aver extract --preset paper --flow dis`` into a fresh store. Both load the
paper's architectures with random weights saved in the real formats (``paper_weights.py``) and run
as separate processes, one after the other, on the same synthetic clips (real H.264 + AAC from a
real face photo). Prints one table: wall, user and system CPU seconds, peak RSS, frames/s, and the
speed-up of aver. Never asserted on in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE = r"""
import sys, time
from pathlib import Path
import av, cv2, numpy as np, timm, torch
from facenet_pytorch import MTCNN
from PIL import Image
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

videos, face, audio_dir, out = sys.argv[1].split(","), sys.argv[2], sys.argv[3], Path(sys.argv[4])
dev = sys.argv[5] if len(sys.argv) > 5 else "cpu"
torch.set_grad_enabled(False)
mtcnn = MTCNN(image_size=224, margin=0, keep_all=False, post_process=False, device=dev)
enet = timm.create_model("tf_efficientnet_b2", pretrained=False, num_classes=0)
enet.load_state_dict(torch.load(face, weights_only=True)); enet.eval().to(dev)
fe = Wav2Vec2FeatureExtractor.from_pretrained(audio_dir)
w2v = Wav2Vec2Model.from_pretrained(audio_dir).eval().to(dev)
mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

def embed(rgb):
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dev).float() / 255
    return enet((x - mean) / std)[0].cpu().numpy()

def flow_image(flow):
    mag, ang = cv2.cartToPolar(flow[..., 0], flow[..., 1])
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = ang * 180 / np.pi / 2
    hsv[..., 1] = 255
    hsv[..., 2] = cv2.normalize(mag, None, 0, 255, cv2.NORM_MINMAX)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

frames_total = 0
for path in videos:
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    crops, box = [], None
    for rgb in frames:
        boxes, _ = mtcnn.detect(Image.fromarray(rgb))
        if boxes is not None:
            box = boxes[0].astype(int)
        if box is None:
            continue
        x1, y1, x2, y2 = np.clip(box, 0, [rgb.shape[1], rgb.shape[0]] * 2)
        crops.append(cv2.resize(rgb[y1:y2, x1:x2], (224, 224)))
    feats = np.stack([embed(c) for c in crops])
    grays = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in crops]
    flows = np.stack([embed(flow_image(dis.calc(a, b, None))) for a, b in zip(grays, grays[1:])])
    with av.open(path) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        wave = np.concatenate([r.to_ndarray()[0] for f in c.decode(audio=0) for r in resampler.resample(f)])
    inputs = fe(wave, sampling_rate=16000, return_tensors="pt")
    audio = w2v(inputs["input_values"].to(dev)).last_hidden_state[0].cpu().numpy()
    stem = Path(path).stem
    np.save(out / f"{stem}_frames.npy", feats.astype(np.float16))
    np.save(out / f"{stem}_flow.npy", flows.astype(np.float16))
    np.save(out / f"{stem}_audio.npy", audio.astype(np.float16))
    frames_total += len(frames)
print(frames_total)
"""


def run(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall, user and system seconds and peak RSS of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise SystemExit(f"{cmd[:3]} failed:\n{out.stderr[-3000:]}")
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "rss_gb": after.ru_maxrss / 2**20,  # of the largest child so far
        "stdout": out.stdout,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--size", default="640x480")
    ap.add_argument(
        "--weights", type=Path, help="folder of paper_weights.py (default $AVER_HOME/bench-weights)"
    )
    ap.add_argument("--aver-set", action="append", default=[], help="extra --set for aver extract")
    ap.add_argument("--skip-baseline", action="store_true", help="time aver only")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: both runs use it")
    ap.add_argument("--json", help="also write the figures to this JSON file (bench/gpu_check.py reads it)")
    args = ap.parse_args()
    from aver.extract.datasets import DatasetOptions, load_dataset
    from aver.utils import aver_home
    from bench.extract import machine
    from bench.paper_weights import paper_weights

    face, audio = paper_weights(args.weights or aver_home() / "bench-weights")
    width, height = (int(v) for v in args.size.split("x"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        actors = max(3, -(-args.clips // 4))
        options = {"n_actors": actors, "clips_per_emotion": 1, "seconds": args.seconds}
        options.update(width=width, height=height)
        index = load_dataset("synthetic", DatasetOptions(data=tmp / "corpus", options=options))
        videos = [c.video for c in index.clips[: args.clips]]
        if not args.skip_baseline:
            (tmp / "npy").mkdir()
            r = run(
                [
                    sys.executable,
                    "-c",
                    BASELINE,
                    ",".join(videos),
                    str(face),
                    str(audio),
                    str(tmp / "npy"),
                    args.device,
                ],
                env,
            )
            rows["VAVL-style baseline"] = {**r, "frames": int(r["stdout"].split()[-1])}
        cmd = [
            sys.executable,
            "-m",
            "aver",
            "extract",
            "-q",
            "--dataset",
            "synthetic",
            "--data",
            str(tmp / "corpus"),
        ]
        cmd += [
            "--cache",
            str(tmp / "cache"),
            "--preset",
            "paper",
            "--flow",
            "dis",
            "--limit",
            str(args.clips),
        ]
        cmd += ["--face-weights", str(face), "--audio-model", str(audio), "--device", args.device]
        for k, v in options.items():
            cmd += ["--dataset-option", f"{k}={json.dumps(v)}"]
        for s in args.aver_set:
            cmd += ["--set", s]
        r = run(cmd, env)
        from aver.cache import FeatureCache

        cache = FeatureCache(str(tmp / "cache" / "synthetic.zarr"))
        rows["aver " + " ".join(args.aver_set)] = {**r, "frames": int(cache.lengths["frames"].sum())}
    print(f"machine: {machine()}")
    print(
        f"{args.clips} clips of {args.seconds:g} s at {args.size}, paper architectures (random weights), "
        f"DIS flow, device {args.device}"
    )
    print("| run | wall s | user s | sys s | peak RSS GB | frames/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        fps = r["frames"] / r["wall"]
        print(
            f"| {name} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | {r['rss_gb']:.2f} | {fps:.2f} |"
        )
    speedup = None
    if len(rows) == 2:
        (b, a) = rows.values()
        speedup = b["wall"] / a["wall"]
        print(f"aver speed-up (wall): {speedup:.2f}x")
    if args.json:
        fps = {name: r["frames"] / r["wall"] for name, r in rows.items()}
        Path(args.json).write_text(
            json.dumps({"device": args.device, "frames_per_s": fps, "speedup": speedup})
        )


if __name__ == "__main__":
    main()
