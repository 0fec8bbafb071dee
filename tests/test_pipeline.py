"""End to end: real synthetic media -> MTCNN -> flow -> encoders -> Zarr, resume, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_CORPUS, small_index

from aver.errors import CacheMismatchError
from aver.extract.pipeline import run_extraction
from aver.layout import DONE, FAILED, open_root

PER_CLIP = [
    "clips/status",
    "clips/error",
    "clips/note",
    "clips/n_frames",
    "clips/n_flow",
    "clips/n_audio",
    "clips/fps",
    "frames/features",
    "frames/timestamp",
    "frames/face_box",
    "frames/face_prob",
    "frames/face_mask",
    "flow/features",
    "audio/features",
    "clips/id",
    "clips/label",
    "folds/split",
]


def assert_same_arrays(url_a: str, url_b: str, exact: bool = True) -> None:
    """Every per-clip array equal. ``exact=False`` allows float rounding in float arrays: another
    number of CPU threads changes the summation order inside MTCNN and the encoders."""
    a, b = open_root(url_a, "r"), open_root(url_b, "r")
    for name in PER_CLIP:
        x, y = a[name][:], b[name][:]
        if exact or x.dtype.kind != "f":
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(
                x.astype(np.float32), y.astype(np.float32), rtol=2e-3, atol=1e-4, err_msg=name
            )


@pytest.mark.slow
def test_end_to_end_extraction(extracted_store):
    g = open_root(extracted_store, "r")
    meta = g.attrs["aver"]
    n = g["clips/id"].shape[0]
    assert n == 6 and (g["clips/status"][:] == DONE).all()
    assert meta["tiny"] is True and meta["preset"] == "tiny" and meta["classes"] == ["neutral", "happy"]
    assert meta["models"]["image"]["weights_sha256"] and meta["models"]["audio"]["weights_sha256"]
    n_frames, n_flow, n_audio = g["clips/n_frames"][:], g["clips/n_flow"][:], g["clips/n_audio"][:]
    assert (n_frames == 20).all(), n_frames  # 0.8 s at 25 fps, native rate
    assert (n_flow == n_frames - 1).all()
    assert (np.abs(n_audio - 40) <= 1).all(), n_audio  # 50 Hz wav2vec2 frames
    assert (g["clips/fps"][:] == 25).all()
    d = meta["dims"]["image"]
    for i in range(n):
        frames = g["frames/features"][i, : n_frames[i]].astype(np.float32)
        flow = g["flow/features"][i, : n_flow[i]].astype(np.float32)
        audio = g["audio/features"][i, : n_audio[i]].astype(np.float32)
        assert frames.shape == (20, d) and np.isfinite(frames).all() and frames.std() > 0
        assert flow.shape == (19, d) and np.isfinite(flow).all() and flow.std() > 0
        assert audio.shape[1:] == (1, meta["dims"]["audio"]) and np.isfinite(audio).all()
        assert not g["frames/features"][i, n_frames[i] :].any()  # padding is zeros
        ts = g["frames/timestamp"][i, : n_frames[i]]
        np.testing.assert_allclose(np.diff(ts), 1 / 25, atol=1e-3)
    mask = g["frames/face_mask"][:]
    assert mask[:, :20].mean() > 0.95  # MTCNN finds the real face in nearly every frame
    boxes = g["frames/face_box"][0, :20]
    assert ((boxes[:, 2] - boxes[:, 0]) > 60).all()  # a face-sized square
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], rtol=1e-4)
    assert g["folds/split"].shape == (3, 6)


@pytest.mark.slow
def test_rerun_skips_and_other_config_is_refused(extracted_store, small_corpus, tiny_config):
    from aver.overrides import apply_overrides

    summary = run_extraction(tiny_config, small_index(small_corpus), extracted_store, progress=False)
    assert summary.skipped == 6 and summary.done == 0
    other = apply_overrides(tiny_config, ["face.margin=0.3"])
    with pytest.raises(CacheMismatchError, match="face.margin"):
        run_extraction(other, small_index(small_corpus), extracted_store, progress=False)


def _cli(store: str, corpus: Path, *extra: str) -> list[str]:
    opts = [f"--dataset-option={k}={json.dumps(v)}" for k, v in SMALL_CORPUS.items()]
    return [
        sys.executable,
        "-m",
        "aver",
        "extract",
        "--dataset",
        "synthetic",
        "--data",
        str(corpus),
        "--store",
        store,
        "--preset",
        "tiny",
        "-q",
        "--set",
        "runtime.group_frames=30",
        "--set",
        "runtime.image_batch=16",
        *opts,
        *extra,
    ]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_arrays(extracted_store, small_corpus, tmp_path):
    """SIGKILL a real extraction after its first commit, rerun it, compare with an uninterrupted run."""
    store = str(tmp_path / "killed.zarr")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        _cli(store, small_corpus),
        env=env,
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    killed_with = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            status = open_root(store, "r")["clips/status"][:]
        except Exception:  # noqa: BLE001 — the template may be half-written while we poll
            continue
        if (status == DONE).sum() >= 1:
            proc.send_signal(signal.SIGKILL)
            killed_with = int((status == DONE).sum())
            break
    proc.wait(timeout=60)
    if killed_with is None:
        pytest.fail(f"the run finished before it could be killed: {proc.stdout.read().decode()[-2000:]}")
    assert killed_with < 6, "killed mid-run"
    done = subprocess.run(
        _cli(store, small_corpus),
        env=env,
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"skipped (already done): {killed_with}" in done.stdout
    assert_same_arrays(store, extracted_store)


@pytest.mark.slow
def test_bad_inputs_are_recorded_and_good_clips_survive(small_corpus, tiny_config, tmp_path):
    import media_fixtures as mf

    from aver.extract.datasets import DatasetOptions, load_dataset

    bad = tmp_path / "bad"
    bad.mkdir()
    good = sorted(small_corpus.rglob("*.mp4"))[:2]
    made = {
        "zero": mf.write_zero_byte(bad, "zero.mp4"),
        "truncated": mf.write_truncated(bad, "truncated.mp4", good[0]),
        "notvideo": mf.write_not_video(bad, "notvideo.mp4"),
        "noaudio": mf.write_video_without_audio(bad, "noaudio.mp4"),
        "noface": mf.write_no_face_clip(bad, "noface.mp4"),
        "single": mf.write_single_frame_clip(bad, "single.mp4"),
        "shortaudio": mf.write_short_audio_clip(bad, "shortaudio.mp4"),
    }
    rows = ["id,video,speaker,label"] + [f"good{i},{p},s{i},a" for i, p in enumerate(good)]
    rows += [f"{k},{p},s{i % 3},b" for i, (k, p) in enumerate(made.items())]
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    index = load_dataset("folder", DatasetOptions(labels=tmp_path / "clips.csv"))
    url = str(tmp_path / "folder.zarr")
    summary = run_extraction(tiny_config, index, url, progress=False)
    g = open_root(url, "r")
    status = dict(zip(g["clips/id"][:], g["clips/status"][:], strict=True))
    errors = dict(zip(g["clips/id"][:], [str(g["clips/error"][i]) for i in range(len(status))], strict=True))
    assert status["good0"] == DONE and status["good1"] == DONE, errors
    expected_cause = {
        "zero": "empty",
        "notvideo": "not a readable video",
        "noaudio": "no audio",
        "noface": "no face",
        "single": "frame",
        "shortaudio": "audio lasts",
    }
    for name, words in expected_cause.items():
        assert status[name] == FAILED, (name, errors[name])
        assert words in errors[name] and str(made[name]) in errors[name], (name, errors[name])
    # a truncated file either fails with a cause or keeps the frames decoded before the damage
    assert status["truncated"] == FAILED and errors["truncated"] or g["clips/n_frames"][2] > 0
    assert summary.failed == sum(s == FAILED for s in status.values())
    assert set(summary.failures) == {k for k, s in status.items() if s == FAILED}
    # good clips' features are intact and finite
    for i, cid in enumerate(g["clips/id"][:]):
        if status[cid] == DONE:
            n = g["clips/n_frames"][i]
            assert np.isfinite(g["frames/features"][i, :n].astype(np.float32)).all()


@pytest.mark.slow
def test_vavl_fold_csv_reaches_the_cache(small_corpus, tiny_config, tmp_path):
    index = small_index(small_corpus)
    ids = [c.clip_id for c in index.clips]
    splits = {"01": "Train", "02": "Development", "03": "Test"}
    lines = ["FileName,neutral,happy,SpkrID,Gender,Split_Set"]
    lines += [
        f"{cid}.mp4,1,0,{c.speaker},F,{splits[c.speaker]}" for cid, c in zip(ids, index.clips, strict=True)
    ]
    (tmp_path / "partition_1.csv").write_text("\n".join(lines) + "\n")
    index = small_index(small_corpus, folds=str(tmp_path / "partition_{fold}.csv"))
    url = str(tmp_path / "folds.zarr")
    run_extraction(tiny_config, index, url, limit=0, progress=False)
    g = open_root(url, "r")
    assert g["folds/split"].shape == (1, 6)
    assert g["folds/split"][0].tolist() == [{"01": 0, "02": 1, "03": 2}[c.speaker] for c in index.clips]
    assert g.attrs["aver"]["folds_source"].startswith("csv:")


def test_fragment_level_audio_and_a_layer_sweep_extract_and_train(small_corpus, tiny_config, tmp_path):
    """audio.fragment_s: one stored audio frame per fragment (hop recorded as the audio rate), the
    tail kept; several layers stored; the trainer uses the fragments as stored and picks a layer."""
    from aver.cache import FeatureCache
    from aver.overrides import apply_overrides
    from aver.train import train_fold
    from aver.train.config import make_config

    cfg = apply_overrides(
        tiny_config, ["audio.fragment_s=0.4", "audio.fragment_hop_s=0.2", "audio.layers=0:3:2"]
    )
    url = str(tmp_path / "fragments.zarr")
    summary = run_extraction(cfg, small_index(small_corpus), url, progress=False)
    assert summary.failed == 0, summary.report()
    cache = FeatureCache(url)
    assert cache.meta["dims"]["audio_rate_hz"] == 5.0 and cache.meta["dims"]["audio_layers"] == 2
    assert cache.audio_fragments == (0.4, 0.2)
    assert cache.meta["config"]["audio"]["layers"] == [0, 2]
    n_audio = cache.lengths["audio"]
    # whole fragments every 0.2 s, and one more ending at the audio's end when a tail is left
    from aver.extract.media import load_audio

    for i, clip in enumerate(small_index(small_corpus).clips):
        samples = len(load_audio(clip.video))
        whole = (samples - 6400) // 3200 + 1
        assert n_audio[i] == whole + ((whole - 1) * 3200 + 6400 < samples), (i, samples, n_audio[i])
    model = {"model.d_model": 16, "model.d_hidden": 24, "model.n_heads": 2, "model.head_hidden": 16}
    metrics = train_fold(
        make_config("tiny", {**model, "data.audio_layer": 1}, cache=url, out=str(tmp_path / "run"), epochs=1)
    )
    assert "test_reported" in metrics
    log = (tmp_path / "run" / "train.log").read_text()
    assert "fragment-level features (0.4 s every 0.2 s) used as stored" in log
    from aver.errors import ConfigError

    with pytest.raises(ConfigError, match="stores 2 audio layer"):
        train_fold(make_config("tiny", {"data.audio_layer": 2}, cache=url, out=str(tmp_path / "x"), epochs=1))


def test_paper_preset_offline_names_every_missing_weight(tmp_path):
    """No weights on this machine: one clear error listing each model and how to supply it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AVER_FACE_WEIGHTS": "", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "aver",
            "extract",
            "--dataset",
            "synthetic",
            "--data",
            str(tmp_path / "data"),
            "--cache",
            str(tmp_path / "c"),
            "--preset",
            "paper",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 2, out.stdout + out.stderr
    for words in ("--face-weights", "facebook/wav2vec2-large-robust", "deepmind/optical-flow-perceiver"):
        assert words in out.stderr, out.stderr
    assert not (tmp_path / "c" / "synthetic.zarr").exists()  # nothing written before the models exist


@pytest.mark.slow
def test_a_cut_is_recorded_per_clip_and_shown_by_info(small_corpus, tiny_config, tmp_path, monkeypatch):
    """Regression: a clip longer than the planned capacity was cut with status done and only a log line."""
    import aver.extract.pipeline as pipeline
    from aver.cache import FeatureCache
    from aver.info import describe
    from aver.store import Capacity

    monkeypatch.setattr(pipeline, "plan_capacity", lambda *a: Capacity(frames=10, audio=30))
    url = str(tmp_path / "cut.zarr")
    summary = run_extraction(tiny_config, small_index(small_corpus), url, progress=False, limit=2)
    assert summary.done == 2
    cache = FeatureCache(url)
    notes = cache.notes()
    assert all("cut at 10 frames" in n and "audio cut at 30" in n for n in notes[:2]), notes
    assert (cache.lengths["frames"][:2] == 10).all()
    assert "notes (2 done clips" in describe(url) and "cut at 10 frames" in describe(url)


def test_capacity_of_a_raw_stream_comes_from_its_audio(tmp_path):
    """Regression: raw H.264 (no frame count, no duration) with a separate 10 s wav got a capacity
    from the other clips (32 frames) and was cut to it."""
    import av

    from aver.extract.config import ExtractConfig
    from aver.extract.datasets import DatasetOptions, load_dataset
    from aver.extract.pipeline import plan_capacity
    from aver.overrides import apply_overrides

    raw = tmp_path / "raw.h264"
    with av.open(str(raw), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(250):
            for pkt in s.encode(
                av.VideoFrame.from_ndarray(np.full((64, 64, 3), i % 200, np.uint8), format="rgb24")
            ):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    wav = tmp_path / "raw.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 160000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for pkt in s.encode(frame):
            c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    rows = ["id,video,speaker,audio"] + [f"r{k},raw.h264,s{k},raw.wav" for k in range(3)]
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    index = load_dataset("folder", DatasetOptions(labels=tmp_path / "clips.csv"))
    cfg = apply_overrides(ExtractConfig(dataset="folder"), {})
    cap = plan_capacity(index, cfg, 50.0)
    assert cap.frames >= 250 and cap.audio >= 500, cap


@pytest.mark.slow
def test_a_streamed_long_clip_gives_the_in_memory_numbers(
    extracted_store, small_corpus, tiny_config, tmp_path
):
    """Streaming (crops and flow in temporary files, models on windows) changes memory, not numbers:
    every clip streamed in windows of 7 frames equals the in-memory reference extraction."""
    from aver.overrides import apply_overrides

    cfg = apply_overrides(tiny_config, {"runtime.stream_frames": 5, "runtime.stream_window": 7})
    url = str(tmp_path / "streamed.zarr")
    summary = run_extraction(cfg, small_index(small_corpus), url, progress=False)
    assert summary.done == 6, summary.report()
    assert_same_arrays(url, extracted_store, exact=False)
    a, b = open_root(url, "r"), open_root(extracted_store, "r")
    for name in ("frames/features", "clips/n_flow", "frames/face_box"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)


@pytest.mark.slow
def test_a_cache_from_before_an_option_is_refused_with_the_set_that_continues_it(
    small_corpus, tiny_config, tmp_path
):
    from aver.overrides import apply_overrides

    url = str(tmp_path / "old.zarr")
    legacy = apply_overrides(tiny_config, {"flow.sigma": "pixel"})  # hashes like a cache from aver 0.1
    run_extraction(legacy, small_index(small_corpus), url, progress=False, limit=1)
    assert "sigma" not in open_root(url, "r").attrs["aver"]["config"]["flow"]
    with pytest.raises(CacheMismatchError, match=r'flow.sigma: None -> .clip.*--set flow.sigma="pixel"'):
        run_extraction(tiny_config, small_index(small_corpus), url, progress=False, limit=1)
    assert run_extraction(legacy, small_index(small_corpus), url, progress=False, limit=1).done == 1


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_the_cuda_path_matches_the_cpu_store(extracted_store, small_corpus, tiny_config, tmp_path, precision):
    """The device-resident path (crops, flow, normalisation, flow images and encoders on the GPU,
    wav2vec2 batched across clips) stores what the CPU path stores, within a stated tolerance:
    float32 (TF32 off, set explicitly) within 2e-3 relative, TF32 within 1e-2, bf16 autocast within 5e-2."""
    from aver.overrides import apply_overrides

    amp, tf32 = precision == "bf16", precision == "tf32"
    sets = ["runtime.device=cuda", f"runtime.amp={str(amp).lower()}", f"runtime.tf32={str(tf32).lower()}"]
    cfg = apply_overrides(tiny_config, sets)
    assert cfg.precision() == precision
    url = str(tmp_path / "cuda.zarr")
    summary = run_extraction(cfg, small_index(small_corpus), url, progress=False)
    assert summary.failed == 0, summary.report()
    cpu, gpu = open_root(extracted_store, "r"), open_root(url, "r")
    tol = {"fp32": 2e-3, "tf32": 1e-2, "bf16": 5e-2}[precision]
    for name in ("frames/features", "flow/features", "audio/features"):
        a, b = cpu[name][:].astype(np.float32), gpu[name][:].astype(np.float32)
        assert np.linalg.norm(a - b) <= tol * np.linalg.norm(a), name
    assert np.array_equal(cpu["clips/n_frames"][:], gpu["clips/n_frames"][:])


def test_the_precision_is_hashed_and_a_store_refuses_another(small_corpus, tiny_config, tmp_path):
    """issue 21 #4: bf16 features differ from float32 ones by 1-5 %, so the precision is part of the
    cache's identity: a float32 store resumed with bf16 (here the CPU's autocast, as CUDA's default
    would) is refused with the difference named; float32 hashes as before (no key)."""
    import dataclasses

    import torch

    from aver.errors import ConfigError
    from aver.extract.config import ExtractConfig
    from aver.extract.models import set_tf32
    from aver.overrides import apply_overrides

    bf16 = apply_overrides(tiny_config, ["runtime.amp=true"])
    tf32 = apply_overrides(tiny_config, ["runtime.tf32=true"])
    assert "precision" not in tiny_config.hashed_dict() and tiny_config.precision() == "fp32"
    assert bf16.hashed_dict()["precision"] == "bf16" and tf32.hashed_dict()["precision"] == "tf32"
    assert len({tiny_config.config_hash(), bf16.config_hash(), tf32.config_hash()}) == 3
    # the CUDA default is bf16 (runtime.amp unset): resolved per device
    on_cuda = dataclasses.replace(
        tiny_config, runtime=dataclasses.replace(tiny_config.runtime, device="cuda")
    )
    assert on_cuda.precision() == "bf16"
    # a stored config rebuilds its precision (aver predict extracts as the cache was made)
    again = ExtractConfig.from_dict({**bf16.hashed_dict(), "runtime": {"device": "cpu", "amp": False}})
    assert again.precision() == "bf16" and again.config_hash() == bf16.config_hash()
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        ExtractConfig.from_dict({**tiny_config.hashed_dict(), "precision": "fp16"})
    set_tf32(True)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    set_tf32(False)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    url = str(tmp_path / "fp32.zarr")
    run_extraction(tiny_config, small_index(small_corpus), url, progress=False, limit=1)
    with pytest.raises(CacheMismatchError, match="precision"):
        run_extraction(bf16, small_index(small_corpus), url, progress=False, limit=1)
