"""Issue 21's CUDA-path defects in decoding, copies and training steps, held on the CPU where the
logic allows (#7: a short clip is decoded once; #8: pinned host memory only for CUDA targets, one
copy back per encoder call; training reads the device once per epoch; ``aver extract`` fails when
every clip does), and checked on a GPU where only a GPU can show it (``gpu`` marker)."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import small_index
from test_pipeline import assert_same_arrays

from aver.errors import TrainingError
from aver.testing import build_feature_cache

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _count_decodes(monkeypatch) -> collections.Counter:
    """Count the decoding passes (``media.iter_frames`` calls) per video path."""
    import aver.extract.media as media

    calls: collections.Counter = collections.Counter()
    real = media.iter_frames

    def counted(path, *args, **kwargs):
        calls[str(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(media, "iter_frames", counted)
    return calls


# -- #7: one decoding per short clip -----------------------------------------------------------------
@pytest.mark.slow
def test_a_short_clip_is_decoded_once_and_stores_the_bits_of_two_passes(
    small_corpus, tiny_config, tmp_path, monkeypatch
):
    from aver.extract.pipeline import run_extraction
    from aver.overrides import apply_overrides

    index = small_index(small_corpus)
    calls = _count_decodes(monkeypatch)
    once = run_extraction(tiny_config, index, str(tmp_path / "once.zarr"), progress=False)
    assert once.failed == 0, once.report()
    assert set(calls.values()) == {1} and len(calls) == len(index.clips), calls
    # the reference: no frames kept, so the crops come from a second decoding (the path before #7)
    calls.clear()
    no_keep = apply_overrides(tiny_config, ["runtime.decode_once_mb=0"])
    twice = run_extraction(no_keep, index, str(tmp_path / "twice.zarr"), progress=False)
    assert twice.failed == 0 and set(calls.values()) == {2}, calls
    assert_same_arrays(str(tmp_path / "once.zarr"), str(tmp_path / "twice.zarr"))


@pytest.mark.slow
def test_a_clip_over_stream_frames_keeps_no_frames_and_is_decoded_again(
    small_corpus, tiny_config, tmp_path, monkeypatch
):
    """A long clip is streamed (flat memory): its frames are dropped during the detection pass."""
    import aver.extract.clip as clip
    from aver.extract.pipeline import run_extraction
    from aver.overrides import apply_overrides

    kept = []
    real = clip._detect_pass
    monkeypatch.setattr(clip, "_detect_pass", lambda *a: kept.append(real(*a)) or kept[-1])
    calls = _count_decodes(monkeypatch)
    cfg = apply_overrides(tiny_config, ["runtime.stream_frames=10"])
    s = run_extraction(cfg, small_index(small_corpus), str(tmp_path / "long.zarr"), progress=False, limit=2)
    assert s.done == 2 and set(calls.values()) == {2}, calls
    assert [k[3] for k in kept] == [None, None]


def test_the_decode_once_budget_is_per_device_and_a_runtime_field_wins():
    from aver.extract.clip import decode_once_bytes
    from aver.extract.config import DEVICE_DEFAULTS

    def cfg(device, decode_once_mb=None):
        return SimpleNamespace(runtime=SimpleNamespace(device=device, decode_once_mb=decode_once_mb))

    cpu, cuda = decode_once_bytes(cfg(device="cpu")), decode_once_bytes(cfg(device="cuda:1"))
    want = {k: DEVICE_DEFAULTS[k]["decode_once_mb"] << 20 for k in ("cpu", "cuda")}
    assert (cpu, cuda) == (want["cpu"], want["cuda"]) and cuda > cpu
    assert cpu < 3840 * 2160 * 3 * 2  # a 4K clip is never kept on the CPU (issue 18's bound)
    assert decode_once_bytes(cfg(device="cuda", decode_once_mb=0)) == 0
    assert decode_once_bytes(cfg(device="cpu", decode_once_mb=None)) == cpu


def test_the_prefetch_depth_is_per_device():
    from aver.extract.config import DEVICE_DEFAULTS
    from aver.extract.pipeline import prefetch_depth

    cuda, cpu = DEVICE_DEFAULTS["cuda"]["prefetch"], DEVICE_DEFAULTS["cpu"]["prefetch"]
    assert prefetch_depth(SimpleNamespace(prefetch=None, device="cuda:1")) == cuda > cpu
    assert prefetch_depth(SimpleNamespace(prefetch=None, device="cpu")) == cpu
    assert prefetch_depth(SimpleNamespace(prefetch=3, device="cpu")) == 3
    assert prefetch_depth(SimpleNamespace(prefetch=0, device="cuda")) == 1  # 0 still decodes


# -- #8: pinned host memory, only for CUDA targets ---------------------------------------------------
@pytest.mark.parametrize("module", ["aver.extract.faces", "aver.train.data"])
def test_pinning_is_chosen_only_for_a_cuda_target_on_a_cuda_machine(module, monkeypatch):
    import importlib

    pins_for = importlib.import_module(module).pins_for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pins_for("cuda") and pins_for("cuda:1") and pins_for(torch.device("cuda", 0))
    assert not pins_for("cpu") and not pins_for(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not pins_for("cuda")  # nothing to pin for: no CUDA runtime


def _record_copies(monkeypatch) -> list:
    """Fake the two tensor methods a host-to-CUDA copy uses (no GPU here): what was pinned, and
    each ``.to`` with its ``non_blocking``; the tensor itself stands for its copy."""
    seen: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.Tensor, "pin_memory", lambda self: seen.append(("pin", tuple(self.shape))) or self
    )
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)

    def to(self, device, *args, non_blocking=False, **kwargs):
        seen.append(("to", str(device), non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "to", to)
    return seen


def test_a_training_batch_bound_for_cuda_is_pinned_and_copied_asynchronously(monkeypatch):
    from aver.train.data import to_device

    batch = {"frames": torch.zeros(2, 3, 4), "labels": torch.tensor([0, 1]), "clip_id": ["a", "b"]}
    seen = _record_copies(monkeypatch)
    out = to_device(batch, "cuda")
    assert seen == [("pin", (2, 3, 4)), ("to", "cuda", True), ("pin", (2,)), ("to", "cuda", True)]
    assert out["clip_id"] == ["a", "b"]
    seen.clear()
    to_device(batch, "cpu")  # the CPU path is a plain copy, never pinned
    assert seen == [("to", "cpu", False)] * 2


def test_extraction_copies_to_cuda_are_pinned_and_the_cpu_path_is_not(monkeypatch):
    from aver.extract.faces import to_device

    x = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    seen = _record_copies(monkeypatch)
    to_device(x, "cuda")
    to_device(x, torch.device("cpu"))
    assert seen == [("pin", (1, 8, 8, 3)), ("to", "cuda", True), ("to", "cpu", False)]


def test_crop_chunks_are_host_buffers_for_the_run_device(monkeypatch):
    """``crop_stream`` fills ``host_buffer``s (pinned for CUDA) and its crops are unchanged on the CPU."""
    import aver.extract.faces as faces

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(5)]
    boxes = np.array([[5, 6, 30, 31]] * 5, np.float32)
    asked = []
    real = faces.host_buffer
    monkeypatch.setattr(
        faces, "host_buffer", lambda shape, device: asked.append(str(device)) or real(shape, device)
    )
    got = torch.cat(list(faces.crop_stream(iter(frames), boxes, 16, block=2)))
    assert asked == ["cpu"] * 3  # blocks of 2, 2 and 1 frames
    assert torch.equal(got, faces.crop_faces(np.stack(frames), boxes, 16))


def test_the_image_encoder_copies_back_once_per_call_and_leaves_cudnn_alone_on_the_cpu(monkeypatch):
    from aver.extract.config import ImageEncoderConfig
    from aver.extract.encoders.image import ImageEncoder

    enc = ImageEncoder(ImageEncoderConfig(arch="test_efficientnet", input_size=32))
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    per_batch = torch.cat([enc(images[:4]), enc(images[4:].expand(4, -1, -1, -1))[:1]])
    flags = []
    hook = enc.model.register_forward_pre_hook(lambda *_: flags.append(torch.backends.cudnn.benchmark))
    monkeypatch.setattr(ImageEncoder, "__call__", lambda *a: pytest.fail("a copy back per batch"))
    before = torch.backends.cudnn.benchmark
    out = enc.encode_batched(images, 4)
    hook.remove()
    assert out.device.type == "cpu" and out.dtype == torch.float32 and torch.equal(out, per_batch)
    out += 1  # a normal tensor, not an inference one
    assert flags == [before, before] and torch.backends.cudnn.benchmark == before
    enc.device = torch.device("cuda")  # the flag is scoped to a CUDA encoder's forwards
    torch.backends.cudnn.benchmark = False
    with enc._tuned():
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before


# -- training: one read of the device per epoch, the non-finite check kept ----------------------------
@pytest.fixture
def toy(tmp_path) -> str:
    return build_feature_cache(str(tmp_path / "toy.zarr"), n_clips=24, n_classes=2)


def test_a_deferred_non_finite_check_names_the_first_bad_batch(toy, tmp_path, monkeypatch):
    """With the check every 3 steps (as on CUDA, every ``FINITE_CHECK_STEPS``), a loss that turns
    NaN at the second step stops the run at the third, naming the second batch's clips."""
    import aver.train.recipe as recipe
    from aver.train import train_fold

    batches, real_batch, real_loss = [], recipe.make_batch, recipe.batch_loss
    monkeypatch.setattr(recipe, "check_every", lambda device: 3)
    monkeypatch.setattr(
        recipe, "make_batch", lambda *a, **k: batches.append(real_batch(*a, **k)) or batches[-1]
    )
    monkeypatch.setattr(
        recipe, "batch_loss", lambda run, b: real_loss(run, b) * (float("nan") if len(batches) >= 2 else 1.0)
    )
    with pytest.raises(
        TrainingError, match=r"non-finite training loss \(nan\) at epoch 1 .* clips \["
    ) as err:
        train_fold(
            toy, 1, preset="tiny", out=str(tmp_path / "run"), epochs=1, overrides={"data.batch_size": 4}
        )
    assert len(batches) == 3
    assert str(batches[1]["clip_id"]) in str(err.value) and str(batches[2]["clip_id"]) not in str(err.value)


@pytest.mark.parametrize("every", [1, 1000])
def test_the_epoch_loss_read_once_equals_the_per_step_sum(toy, tmp_path, monkeypatch, every):
    import json

    import aver.train.recipe as recipe
    from aver.train import train_fold

    steps, real = [], recipe.batch_loss
    monkeypatch.setattr(recipe, "check_every", lambda device: every)
    monkeypatch.setattr(
        recipe, "batch_loss", lambda run, b: steps.append((real(run, b), len(b["clip_id"]))) or steps[-1][0]
    )
    out = tmp_path / f"run{every}"
    train_fold(toy, 1, preset="tiny", out=str(out), epochs=1, overrides={"data.batch_size": 4})
    history = json.loads((out / "history.json").read_text())
    rows = history if isinstance(history, list) else history["history"]
    total = 0.0
    for loss, k in steps:  # the per-step float read before issue 21
        total = total + float(loss.detach()) * k
    assert len(steps) >= 3 and rows[0]["train_loss"] == total / sum(k for _, k in steps)


def test_steps_wait_for_the_gpu_only_when_timings_are_asked_for():
    from aver.train.recipe import FINITE_CHECK_STEPS, check_every, sync_each_step

    assert not sync_each_step(SimpleNamespace(device="cuda"))
    assert not sync_each_step(SimpleNamespace(device="cuda:0", timings=False))
    assert sync_each_step(SimpleNamespace(device="cuda:0", timings=True))
    assert not sync_each_step(SimpleNamespace(device="cpu", timings=True))
    assert check_every("cpu") == 1 and check_every("cuda:1") == FINITE_CHECK_STEPS > 1


# -- aver extract: every clip failed -> a non-zero exit ------------------------------------------------
def _folder_corpus(tmp_path, videos) -> list[str]:
    rows = ["video,speaker,label"] + [f"{v},s{k},a" for k, v in enumerate(videos)]
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    return ["extract", "--dataset", "folder", "--labels", str(tmp_path / "clips.csv"), "--preset", "tiny"]


def test_extract_exits_4_when_every_clip_failed_and_0_when_one_is_done(small_corpus, tmp_path, capsys):
    import media_fixtures as mf

    from aver.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    broken = [
        mf.write_zero_byte(bad, "zero.mp4"),
        mf.write_not_video(bad, "text.mp4"),
        mf.write_no_face_clip(bad, "noface.mp4"),
    ]
    argv = _folder_corpus(tmp_path, broken)
    assert main([*argv, "--store", str(tmp_path / "bad.zarr"), "-q"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aver: error: every one of the 3 clips failed"), err
    assert "most common cause: [decode] in 2 of 3 clips" in err[0] and "--retry-failed" in err[0], err
    good = sorted(small_corpus.rglob("*.mp4"))[0]
    argv = _folder_corpus(tmp_path, [good, *broken])
    assert main([*argv, "--store", str(tmp_path / "mixed.zarr"), "-q"]) == 0
    assert "failed: 3" in capsys.readouterr().out


def test_a_store_with_clips_done_before_is_not_all_failed():
    from aver.extract.pipeline import Summary

    bad = {"c1": "x.mp4: [faces] no face detected in any of the 20 frames"}
    assert Summary(total=1, failed=1, failures=bad).all_failed()
    assert not Summary(total=2, failed=1, skipped=1, failures=bad).all_failed()
    assert not Summary(total=2, failed=1, done=1, failures=bad).all_failed()
    assert not Summary(total=0).all_failed()
    assert Summary(total=1, failed=1, failures=bad).common_cause() == (
        "[faces] in 1 of 1 clips, e.g. no face detected in any of the 20 frames"
    )


# -- on a GPU --------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
def test_cuda_crop_chunks_are_pinned_and_crop_as_on_the_cpu(monkeypatch):
    import aver.extract.faces as faces

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(7)]
    boxes = np.array([[20.3, 15.7, 90.2, 85.6]] * 7, np.float32)
    pinned, real = [], faces.host_buffer
    monkeypatch.setattr(
        faces, "host_buffer", lambda shape, device: pinned.append((b := real(shape, device)).is_pinned()) or b
    )
    gpu = torch.cat(list(faces.crop_stream(iter(frames), boxes, 32, block=3, device="cuda")))
    assert pinned == [True] * 3 and gpu.device.type == "cuda"  # blocks of 3, 3 and 1 frames
    cpu = torch.cat(list(faces.crop_stream(iter(frames), boxes, 32, block=3)))
    assert pinned[3:] == [False] * 3  # the CPU path's buffers are plain memory
    assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1  # roi_align's float sums, rounded


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_batches_are_pinned_before_the_copy(monkeypatch):
    from aver.train.data import to_device

    pinned, real = [], torch.Tensor.pin_memory
    monkeypatch.setattr(
        torch.Tensor, "pin_memory", lambda self: pinned.append((p := real(self)).is_pinned()) or p
    )
    batch = {"frames": torch.randn(4, 9, 6), "index": torch.arange(4)}
    out = to_device(batch, "cuda")
    assert pinned == [True, True] and all(v.is_cuda for v in out.values())
    assert torch.equal(out["frames"].cpu(), batch["frames"])


@pytest.mark.gpu
@needs_cuda
def test_cuda_image_encoder_tunes_cudnn_in_its_forwards_only():
    from aver.extract.config import ImageEncoderConfig
    from aver.extract.encoders.image import ImageEncoder

    enc = ImageEncoder(ImageEncoderConfig(arch="test_efficientnet", input_size=32), device="cuda")
    flags = []
    enc.model.register_forward_pre_hook(lambda *_: flags.append(torch.backends.cudnn.benchmark))
    before = torch.backends.cudnn.benchmark = False
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)  # host images: pinned, copied
    out = enc.encode_batched(images, 4)
    assert flags == [True] * 3 and torch.backends.cudnn.benchmark == before
    assert out.device.type == "cpu" and out.shape == (10, enc.dim) and torch.isfinite(out).all()


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_steps_do_not_synchronise(toy, tmp_path, monkeypatch):
    """No explicit per-step wait (timings not asked for); the epoch still reports its loss."""
    from aver.train import train_fold

    waits = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: waits.append(a) or real(*a))
    train_fold(toy, 1, preset="tiny", out=str(tmp_path / "run"), epochs=1, device="cuda")
    assert waits == []


@pytest.mark.gpu
@needs_cuda
@pytest.mark.slow
def test_cuda_short_clips_are_decoded_once(small_corpus, tiny_config, tmp_path, monkeypatch):
    from aver.extract.pipeline import run_extraction
    from aver.overrides import apply_overrides

    calls = _count_decodes(monkeypatch)
    cfg = apply_overrides(tiny_config, ["runtime.device=cuda"])
    s = run_extraction(cfg, small_index(small_corpus), str(tmp_path / "c.zarr"), progress=False)
    assert s.failed == 0 and set(calls.values()) == {1}, calls
