"""Issue 21's CUDA-path defects in stage one, checked on the CPU (and on a GPU where one exists).

#12: wav2vec2 batches are formed from clips of similar length (``length_batches``), not in the
order given, and their outputs come back in that order, equal to one clip at a time.
#2: Perceiver IO flow builds its Fourier position encoding once per (size, device, dtype) and
expands it per tile instead of rebuilding it every forward.
Also: the spectral front ends of stage two under bf16 autocast against float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aver.extract.config import AudioEncoderConfig, FlowConfig
from aver.extract.encoders.audio import AudioEncoder, length_batches, padding_fraction
from aver.extract.flow.perceiver import CachedFourierPositions, PerceiverFlow, cache_position_encoding
from aver.extract.tiny import materialise_tiny_models, tiny_perceiver_config
from aver.train import spectral as sp

SR = 16000
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return materialise_tiny_models(tmp_path_factory.mktemp("tiny"))


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def _in_order(n: int, batch: int) -> list[list[int]]:
    """The batches of the given order, ``batch`` at a time: what #12 reported."""
    return [list(range(a, min(a + batch, n))) for a in range(0, n, batch)]


# --- #12: which clips share a wav2vec2 batch ----------------------------------------------------------------


def test_length_batches_pad_far_less_than_batching_in_order() -> None:
    lengths = [2 * SR, 30 * SR] * 16  # 2 s and 30 s clips alternating, as a group may hold them
    naive = padding_fraction(lengths, _in_order(len(lengths), 8))
    assert naive == pytest.approx(1 - 32 / 60)  # each batch: 4 x 2 s + 4 x 30 s padded to 8 x 30 s
    batches = length_batches(lengths, 8)
    assert padding_fraction(lengths, batches) == 0.0  # 2 x eight 30 s clips, then 2 x eight 2 s ones
    assert [sorted(lengths[i] for i in b) for b in batches] == [[30 * SR] * 8] * 2 + [[2 * SR] * 8] * 2
    # Real lengths (CREMA-D-like 1.5-5 s with a few long ones), batch 32, bucket 0.25 s, min_fill 0.5
    rng = np.random.default_rng(0)
    mixed = [int(s * SR) for s in np.concatenate([rng.uniform(1.5, 5.0, 28), rng.uniform(10, 30, 4)])]
    rng.shuffle(mixed)
    sorted_frac = padding_fraction(mixed, length_batches(mixed, 32, None, SR // 4, 0.5), SR // 4)
    in_order_frac = padding_fraction(mixed, _in_order(len(mixed), 32), SR // 4)
    assert in_order_frac > 0.6 and sorted_frac < 0.25 and sorted_frac < in_order_frac / 3


@pytest.mark.parametrize("seed", range(6))
def test_length_batches_invariants(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = [int(v) for v in rng.integers(1, 40 * SR, size=int(rng.integers(1, 60)))]
    batch, bucket, min_fill = (
        int(rng.integers(1, 9)),
        int(rng.choice([1, 4000, SR])),
        float(rng.uniform(0, 1)),
    )
    cap = int(rng.integers(SR, 200 * SR))
    batches = length_batches(lengths, batch, cap, bucket, min_fill)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each clip exactly once
    previous = math.inf
    for b in batches:
        padded = -(-lengths[b[0]] // bucket) * bucket  # the first clip is the batch's longest
        assert len(b) <= batch and max(lengths[i] for i in b) == lengths[b[0]] <= previous
        assert len(b) == 1 or len(b) * padded <= cap  # only a lone clip may exceed the cap
        assert all(lengths[i] >= min_fill * lengths[b[0]] for i in b)  # min_fill of the longest
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
        previous = lengths[b[-1]]
    assert length_batches([], 4) == []
    with pytest.raises(ValueError, match="batch >= 1"):
        length_batches([SR], 0)
    with pytest.raises(ValueError, match="min_fill"):
        length_batches([SR], 2, min_fill=1.5)


def _spy_padded(enc: AudioEncoder, seen: list[tuple[list[int], int]]) -> None:
    real = enc._padded_forward

    def spy(waves: list[np.ndarray], length: int) -> list[torch.Tensor]:
        seen.append(([len(w) for w in waves], length))
        return real(waves, length)

    enc._padded_forward = spy  # type: ignore[method-assign]


def test_encode_many_batches_by_length_and_keeps_the_order(tiny: dict[str, str]) -> None:
    cfg = AudioEncoderConfig(model=tiny["audio_model"], layers=(0, -1), window_s=3.0, context_s=0.5)
    enc = AudioEncoder(cfg, batch=3)
    seconds = (0.4, 2.9, 0.45, 2.6, 1.1, 3.7, 0.5, 1.6, 2.75, 0.42)  # 3.7 s: over window_s, windowed
    waves = [_wave(s, seed=k) for k, s in enumerate(seconds)]
    seen: list[tuple[list[int], int]] = []
    _spy_padded(enc, seen)
    many = enc.encode_many(waves)
    for w, got in zip(waves, many, strict=True):  # the order of ``waves``, each as if alone
        alone = enc(w)
        assert got.shape == alone.shape == (enc.num_frames(len(w)), 2, 32)
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)
    bucket = int(enc.BUCKET_S * SR)
    for rows, length in seen:  # neighbours by length, padded to their longest (rounded to a bucket)
        assert 2 <= len(rows) <= 3 and length == -(-max(rows) // bucket) * bucket
        assert min(rows) >= enc.MIN_FILL * max(rows)
    # Longest first: 2.9/2.75/2.6 s padded to 3 s; 1.6/1.1 s to 1.75 s (0.5 s is under half of that);
    # 0.5/0.45/0.42 s to 0.5 s; 0.4 s is a batch of one (a plain forward), 3.7 s is over window_s.
    # In the order given, the first batch would have padded 0.4 s and 0.45 s to 3 s.
    assert seen == [([46400, 44000, 41600], 48000), ([25600, 17600], 28000), ([8000, 7200, 6720], 8000)]


def test_encode_many_caps_padded_samples_and_batch_one_is_bit_stable(tiny: dict[str, str]) -> None:
    cfg = AudioEncoderConfig(model=tiny["audio_model"], layers=(-1,))
    waves = [_wave(s, seed=k) for k, s in enumerate((0.6, 0.7, 0.65, 0.55, 0.62))]
    capped = AudioEncoder(cfg, batch=8, max_samples=2 * SR)  # at most 2 x 1 s of padded samples
    seen: list[tuple[list[int], int]] = []
    _spy_padded(capped, seen)
    out = capped.encode_many(waves)
    assert seen and all(len(rows) * length <= 2 * SR for rows, length in seen)
    single = AudioEncoder(cfg, batch=1)
    for w, got in zip(waves, out, strict=True):
        torch.testing.assert_close(got, single(w), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, single(w)) for a, w in zip(single.encode_many(waves), waves, strict=True))


def test_fragments_of_all_clips_share_batches(tiny: dict[str, str]) -> None:
    """Fragment-level encoding (DE-III) batches the equal-length fragments of every clip together."""
    cfg = AudioEncoderConfig(model=tiny["audio_model"], layers=(0, -1), fragment_s=0.5, fragment_hop_s=0.25)
    waves = [_wave(s, seed=k) for k, s in enumerate((1.0, 0.3, 1.6, 0.7))]  # 3, 1 (short), 6, 2 fragments
    enc = AudioEncoder(cfg, batch=8)
    forwards: list[int] = []
    hook = enc.model.register_forward_hook(lambda m, args, out: forwards.append(args[0].shape[0]))
    many = enc.encode_many(waves)
    hook.remove()
    assert sorted(forwards) == [1, 3, 8]  # 11 whole fragments in 8 + 3, the 0.3 s clip alone
    single = AudioEncoder(cfg, batch=1)
    for w, got in zip(waves, many, strict=True):
        alone = single(w)
        assert got.shape == alone.shape == (enc.num_frames(len(w)), 2, 32)
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, single(w)) for a, w in zip(single.encode_many(waves), waves, strict=True))
    with pytest.raises(ValueError, match="too short"):
        enc.encode_many([waves[0], np.zeros(100, np.float32)])


# --- #2: Perceiver's Fourier position encoding, built once ---------------------------------------------------


def _perceiver() -> PerceiverFlow:
    torch.manual_seed(0)
    return PerceiverFlow(
        FlowConfig(backend="perceiver", tile_overlap=8), "cpu", config=tiny_perceiver_config()
    )


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda m, args, out: calls.append(1))
    return calls


def test_perceiver_position_encoding_is_built_once_and_changes_nothing() -> None:
    backend = _perceiver()
    wrapper = backend.positions
    assert isinstance(wrapper, CachedFourierPositions)
    assert backend.model.perceiver.input_preprocessor.position_embeddings is wrapper
    calls = _count_calls(wrapper.inner)
    tiles = [torch.rand(n, 2, 27, 32, 32) * 2 - 1 for n in (3, 1, 2)]
    with torch.inference_mode():
        cached = [backend.run_tiles(t) for t in tiles]
    assert len(calls) == 1 and wrapper.computed == 1  # three forwards, one table
    crops = torch.randint(0, 256, (3, 3, 48, 40), dtype=torch.uint8)
    flow_cached = backend(crops[:2], crops[1:])
    backend.model.perceiver.input_preprocessor.position_embeddings = wrapper.inner  # transformers' own
    with torch.inference_mode():
        plain = [backend.run_tiles(t) for t in tiles]
    assert len(calls) == 4  # uncached: one per forward
    assert all(torch.equal(a, b) for a, b in zip(cached, plain, strict=True))
    assert torch.equal(flow_cached, backend(crops[:2], crops[1:]))
    again = cache_position_encoding(backend.model)  # wraps the restored module again
    assert again is not wrapper and again is cache_position_encoding(backend.model)  # never twice


def test_cached_positions_are_an_expanded_view_per_dtype() -> None:
    backend = _perceiver()
    wrapper = backend.positions
    inner = wrapper.inner
    with torch.inference_mode():
        table = wrapper((32, 32), 8, device=torch.device("cpu"), dtype=torch.float32)
    assert table.shape == (8, 32 * 32, 258) and table.stride(0) == 0  # expand, not repeat
    assert not table.is_inference()  # usable outside inference_mode (autograd on) as well
    torch.testing.assert_close(table, inner((32, 32), 8, device="cpu", dtype=torch.float32), rtol=0, atol=0)
    half = wrapper((32, 32), 2, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and wrapper.computed == 2  # keyed by dtype (autocast on/off)
    assert torch.equal(half, inner((32, 32), 2, device="cpu", dtype=torch.bfloat16))
    pos = torch.rand(2, 32 * 32, 2) * 2 - 1  # explicit positions bypass the cache
    assert torch.equal(
        wrapper((32, 32), 2, "cpu", torch.float32, pos=pos), inner((32, 32), 2, "cpu", torch.float32, pos=pos)
    )
    assert wrapper.computed == 2
    tiles = torch.rand(1, 2, 27, 32, 32) * 2 - 1
    backend.model.zero_grad()
    backend.model(inputs=tiles).logits.sum().backward()  # with autograd: the cached table is a leaf
    assert wrapper.num_dimensions == 2 and wrapper.output_size() == 258


def test_perceiver_state_dict_and_save_pretrained_unchanged(tmp_path: Path) -> None:
    from transformers import PerceiverForOpticalFlow

    backend = _perceiver()
    plain = PerceiverForOpticalFlow(tiny_perceiver_config())
    assert list(backend.model.state_dict()) == list(plain.state_dict())
    backend.model.save_pretrained(tmp_path / "p")
    loaded = PerceiverForOpticalFlow.from_pretrained(tmp_path / "p")
    assert not isinstance(loaded.perceiver.input_preprocessor.position_embeddings, CachedFourierPositions)


def test_packing_two_crops_in_one_tile_would_change_their_flow() -> None:
    """Why crops are not packed side by side into one window: Perceiver attends over the whole tile,
    so one half's flow changes when only the other half does (and its Fourier positions differ)."""
    cfg = tiny_perceiver_config()
    cfg.train_size = [32, 40]
    torch.manual_seed(0)
    backend = PerceiverFlow(FlowConfig(backend="perceiver", tile_overlap=0), "cpu", config=cfg)
    x = torch.rand(1, 2, 27, 32, 40) * 2 - 1
    y = x.clone()
    y[..., 20:] = torch.rand(1, 2, 27, 32, 20) * 2 - 1  # only the right half differs
    with torch.inference_mode():
        left_x, left_y = backend.run_tiles(x)[..., :20], backend.run_tiles(y)[..., :20]
    assert (left_x - left_y).abs().max() > 1e-3 * left_x.abs().max()


# --- the spectral front ends (stage two) under bf16 autocast --------------------------------------------------

# bf16 keeps 8 significant bits. Measured on the CPU (below): spectrogram256 is exact (torch.stft and
# slicing are not autocast), logmel is within 0.0038 x max|ref| and mfcc10 within 0.0034 x max|ref|
# (mostly the bf16 rounding of the output itself: autocast returns the mel/DCT products in bf16).
BF16_REL = 2.0**-7


def _speech_like(batch: int = 3, seconds: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t) * (1 + 0.5 * torch.sin(2 * math.pi * 3 * t))
    wave = tone[None].repeat(batch, 1) + 0.05 * torch.randn(batch, n, generator=g)
    return wave, torch.tensor([n, int(0.75 * n), 9000][:batch])


def _check_bf16(device: str) -> None:
    wave, lengths = _speech_like()
    wave, lengths = wave.to(device), lengths.to(device)
    for name in sp.SPECTRAL:
        ref, counts = sp.features(wave, lengths, name)
        with torch.autocast(device, dtype=torch.bfloat16):
            got, got_counts = sp.features(wave, lengths, name)
        assert torch.equal(got_counts, counts)
        err = (got.float() - ref).abs()
        scale = float(ref.abs().max())
        assert float(err.max()) <= BF16_REL * scale, (name, float(err.max()), scale)
        assert float(err.mean()) <= 2.0**-9 * scale, name
    ref_img = sp.spectrogram_images(wave, lengths, size=64)
    with torch.autocast(device, dtype=torch.bfloat16):
        img = sp.spectrogram_images(wave, lengths, size=64)
    assert float((img.float() - ref_img).abs().max()) <= 0.05  # unit-variance images


def test_spectral_presets_under_cpu_bf16_autocast_match_float32() -> None:
    _check_bf16("cpu")


@pytest.mark.gpu
@cuda
def test_spectral_presets_under_cuda_bf16_autocast_match_float32() -> None:
    _check_bf16("cuda")


# --- on a GPU ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
def test_cuda_encode_many_equals_one_at_a_time(tiny: dict[str, str]) -> None:
    allow = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions: batched vs alone is then 1e-4 close
    try:
        enc = AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(0, -1)), "cuda", batch=4)
        waves = [_wave(s, seed=k) for k, s in enumerate((0.4, 2.9, 0.45, 2.6, 1.1, 0.5, 1.6))]
        for w, got in zip(waves, enc.encode_many(waves), strict=True):
            assert got.device.type == "cpu" and got.dtype == torch.float32
            torch.testing.assert_close(got, enc(w), rtol=1e-4, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32 = allow


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_perceiver_positions_built_once_on_the_device(amp: bool) -> None:
    torch.manual_seed(0)
    backend = PerceiverFlow(
        FlowConfig(backend="perceiver", tile_overlap=8), "cuda", amp=amp, config=tiny_perceiver_config()
    )
    wrapper = backend.positions
    calls = _count_calls(wrapper.inner)
    crops = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, device="cuda")
    cached = [backend(crops[:3], crops[1:], keep_device=True) for _ in range(3)]
    assert len(calls) == 1 and all(t.device.type == "cuda" for t in wrapper._cache.values())
    backend.model.perceiver.input_preprocessor.position_embeddings = wrapper.inner
    plain = backend(crops[:3], crops[1:], keep_device=True)
    assert all(torch.equal(c, plain) for c in cached)
