"""aver.train.spectral against librosa references, and its batching / padding guarantees."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from aver.train import spectral as sp

SR = 16000
DB_TOL = 1e-2  # dB: float32 torch vs float64 librosa, values floored at 80 dB below the clip's peak


def _clip(n: int, seed: int = 0) -> np.ndarray:
    """A tone in noise with a louder middle: structure in both time and frequency."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    env = 0.2 + np.exp(-(((t - t.mean()) / 0.1) ** 2))
    return (0.3 * env * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float64)


def _one(y: np.ndarray, cfg) -> np.ndarray:
    x, c = sp.features(torch.tensor(y, dtype=torch.float32)[None], torch.tensor([len(y)]), cfg)
    return x[0, :, : int(c[0])].numpy()


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("window", ["hann", "hamming"])
def test_spectrogram_matches_librosa_stft(center, window):
    y = _clip(5000)
    cfg = sp.SpectralConfig(kind="spectrogram", win_ms=25, hop_ms=10, n_fft=512, window=window, center=center)
    cfg = sp.with_options(cfg, top_db=80.0)
    stft = librosa.stft(y, n_fft=512, hop_length=160, win_length=400, window=window, center=center)
    ref = librosa.power_to_db(np.abs(stft) ** 2, top_db=80.0)
    out = _one(y, cfg)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=DB_TOL)


def test_mocanu_preset_is_the_paper_spectrogram():
    cfg = sp.SPECTRAL["spectrogram256"]
    assert (cfg.window, cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.n_features) == (
        "hamming",
        512,
        160,
        512,
        256,
    )
    y = _clip(7000, seed=1)
    stft = librosa.stft(y, n_fft=512, hop_length=160, win_length=512, window="hamming", center=True)
    ref = librosa.power_to_db(np.abs(stft[:256]) ** 2, top_db=80.0)
    np.testing.assert_allclose(_one(y, cfg), ref, atol=DB_TOL)


def test_magnitude_without_log():
    y = _clip(3000, seed=2)
    cfg = sp.SpectralConfig(kind="spectrogram", power=1.0, log=False, n_freq=100)
    ref = np.abs(librosa.stft(y, n_fft=512, hop_length=160, win_length=400))[:100]
    np.testing.assert_allclose(_one(y, cfg), ref, atol=1e-4 * ref.max())


@pytest.mark.parametrize("htk,norm", [(False, "slaney"), (True, None)])
def test_mel_filterbank_matches_librosa(htk, norm):
    cfg = sp.SpectralConfig(kind="logmel", n_mels=40, fmin=50.0, fmax=7000.0, htk=htk, mel_norm=norm)
    ref = librosa.filters.mel(sr=SR, n_fft=512, n_mels=40, fmin=50.0, fmax=7000.0, htk=htk, norm=norm)
    np.testing.assert_allclose(sp.mel_filterbank(cfg).numpy(), ref, rtol=1e-5, atol=1e-7)


def test_logmel_matches_librosa_melspectrogram():
    y = _clip(6000, seed=3)
    cfg = sp.with_options("logmel", top_db=80.0)
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=512, hop_length=160, win_length=400, window="hann", n_mels=64
    )
    np.testing.assert_allclose(_one(y, cfg), librosa.power_to_db(mel, top_db=80.0), atol=DB_TOL)


@pytest.mark.parametrize("htk", [False, True])
def test_mfcc_matches_librosa(htk):
    y = _clip(6000, seed=4)
    cfg = sp.with_options("mfcc10", htk=htk)
    ref = librosa.feature.mfcc(
        y=y, sr=SR, n_mfcc=10, n_fft=512, hop_length=160, win_length=400, window="hann", n_mels=40, htk=htk
    )
    out = _one(y, cfg)
    assert out.shape == ref.shape == (10, 1 + 6000 // 160)
    np.testing.assert_allclose(out, ref, atol=5e-3)  # DCT of dB values: ~sqrt(40) x the dB error


def test_dct_is_orthonormal():
    d = sp.dct_matrix(40, 40).double()
    torch.testing.assert_close(d @ d.T, torch.eye(40, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["spectrogram256", "mfcc10", "logmel"])
@pytest.mark.parametrize("center", [True, False])
def test_batched_equals_per_clip(preset, center):
    cfg = sp.with_options(preset, center=center)
    lens = [4321, 160, 2500, 37]  # includes clips shorter than one window
    wave = torch.randn(len(lens), 5000)  # noise past each length must not leak in
    x, counts = sp.features(wave, torch.tensor(lens), cfg)
    assert x.shape == (len(lens), cfg.n_features, int(counts.max()))
    for i, n in enumerate(lens):
        xi, ci = sp.features(wave[i : i + 1, :n], torch.tensor([n]), cfg)
        assert int(ci[0]) == int(counts[i]) == int(sp.frame_counts(torch.tensor([n]), cfg)[0])
        torch.testing.assert_close(x[i, :, : int(ci[0])], xi[0], atol=2e-3, rtol=1e-4)
        assert torch.all(x[i, :, int(ci[0]) :] == 0)


@pytest.mark.filterwarnings("ignore:n_fft=512 is too large")
def test_frame_counts_follow_librosa():
    for n in (0, 1, 159, 160, 511, 512, 513, 4000):
        y = np.zeros(max(n, 1))
        centred = librosa.stft(y[:n] if n else np.zeros(1), n_fft=512, hop_length=160).shape[1]
        assert int(sp.frame_counts(torch.tensor([n]), "logmel")[0]) == (centred if n else 1)
        if n >= 512:
            plain = librosa.stft(y, n_fft=512, hop_length=160, center=False).shape[1]
            assert (
                int(sp.frame_counts(torch.tensor([n]), sp.with_options("logmel", center=False))[0]) == plain
            )
    assert int(sp.frame_counts(torch.tensor([100]), sp.with_options("logmel", center=False))[0]) == 1


def test_short_and_empty_clips_are_finite():
    x, c = sp.features(torch.randn(2, 50), torch.tensor([50, 0]), "mfcc10")
    assert c.tolist() == [1, 1] and torch.isfinite(x).all()


def test_bad_options_raise():
    with pytest.raises(KeyError):
        sp.features(torch.zeros(1, 10), torch.tensor([10]), "nope")
    with pytest.raises(ValueError):
        sp.features(torch.zeros(1, 10), torch.tensor([10]), sp.SpectralConfig(window="blackman"))
    with pytest.raises(ValueError):
        sp.features(torch.zeros(1, 10), torch.tensor([10]), sp.SpectralConfig(kind="mfcc", log=False))


def _images(lens, **kw):
    torch.manual_seed(0)
    wave = torch.randn(len(lens), max(lens)) * 0.1
    return sp.spectrogram_images(wave, torch.tensor(lens), **kw)


@pytest.mark.parametrize("placement", ["uniform", "pad"])
def test_spectrogram_images_shape_and_batch_norm(placement):
    img = _images([37000, 59000, 8000], size=32, placement=placement)
    assert img.shape == (3, 6, 1, 32, 32)
    assert abs(float(img.mean())) < 1e-4 and abs(float(img.std(unbiased=False)) - 1) < 1e-3
    clip = _images([37000, 8000], size=32, placement=placement, normalize="clip")
    for b in range(2):
        assert abs(float(clip[b].mean())) < 1e-4 and abs(float(clip[b].std(unbiased=False)) - 1) < 1e-3


def _parts_raw(lens, placement, n_parts=6):
    """Parts without resizing/normalising: size = the part's own height/width would need F x 100."""
    wave = torch.randn(len(lens), max(lens)) * 0.1
    x, counts = sp.raw_features(wave, torch.tensor(lens), "spectrogram256", min_len=n_parts * 100 * 160 + 512)
    starts = sp._part_starts(counts, n_parts, 100, placement)
    return x, counts, starts


def test_uniform_placement_spreads_parts_over_the_clip():
    x, counts, starts = _parts_raw([37000, 130000, 10000], "uniform")
    assert counts.tolist() == [232, 813, 63]
    assert starts[0].tolist() == [0, 26, 53, 79, 106, 132]  # overlapping: 2.3 s clip, six 1 s parts
    assert starts[0, -1] + 100 == counts[0]  # the last part ends at the clip's last frame
    assert starts[1, -1] + 100 == counts[1] and (starts[1].diff() > 100).all()  # long clip: gaps
    assert starts[2].tolist() == [0] * 6  # shorter than a part: one zero-padded part, repeated


def test_pad_placement_and_silence_after_the_clip():
    x, counts, starts = _parts_raw([25000], "pad")
    assert starts[0].tolist() == [0, 100, 200, 300, 400, 500]
    floor = x[0, :, : int(counts[0])].max() - 80.0
    assert torch.allclose(x[0, :, int(counts[0]) + 3 : 600], floor.expand(256, 600 - int(counts[0]) - 3))


def test_images_are_resized_parts():
    lens = [37000, 9000]
    torch.manual_seed(1)
    wave = torch.randn(2, 37000) * 0.1
    for placement in ("uniform", "pad"):
        img = sp.spectrogram_images(wave, torch.tensor(lens), size=50, placement=placement, normalize="none")
        x, counts = sp.raw_features(wave, torch.tensor(lens), "spectrogram256", min_len=600 * 160 + 512)
        starts = sp._part_starts(counts, 6, 100, placement)
        for b in range(2):
            for k in (0, 5):
                s = int(starts[b, k])
                part = x[b, :, s : s + 100][None, None]
                ref = torch.nn.functional.interpolate(part, size=(50, 50), mode="bilinear")[0, 0]
                torch.testing.assert_close(img[b, k, 0], ref, atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["spectrogram256", "mfcc10", "logmel"])
def test_cuda_matches_cpu(preset):
    wave, lens = torch.randn(3, 9000) * 0.1, torch.tensor([9000, 4000, 300])
    x, c = sp.features(wave, lens, preset)
    xg, cg = sp.features(wave.cuda(), lens.cuda(), preset)
    assert xg.device.type == "cuda" and torch.equal(cg.cpu(), c)
    torch.testing.assert_close(xg.cpu(), x, atol=5e-3, rtol=1e-4)
    img = sp.spectrogram_images(wave.cuda(), lens, size=32)
    torch.testing.assert_close(img.cpu(), sp.spectrogram_images(wave, lens, size=32), atol=1e-3, rtol=1e-3)
