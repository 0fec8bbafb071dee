"""Encoders, weight formats and the tiny preset's models. No network, no downloaded weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aver.errors import ConfigError, MissingWeightsError
from aver.extract.config import AudioEncoderConfig, ImageEncoderConfig
from aver.extract.encoders.audio import AudioEncoder
from aver.extract.encoders.image import ImageEncoder
from aver.extract.encoders.weights import load_state_dict, save_safetensors, sha256_file
from aver.extract.tiny import materialise_tiny_models, tiny_perceiver_config

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # test_efficientnet input size in these tests: small and fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return materialise_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, SIZE, SIZE, generator=gen)


def _timm(arch: str = "test_efficientnet", num_classes: int = 0, seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes).eval()


def _encoder(weights: Path | str | None = None, arch: str = "test_efficientnet", **kw) -> ImageEncoder:
    cfg = ImageEncoderConfig(
        arch=arch, weights=None if weights is None else str(weights), input_size=SIZE, **kw
    )
    return ImageEncoder(cfg)


# ----------------------------------------------------------------------------------------------- image


def test_image_random_init_shapes_and_input_types(images: torch.Tensor) -> None:
    enc = _encoder()
    out = enc(images[:2])
    assert out.shape == (2, enc.dim) and enc.dim == 256
    assert out.dtype == torch.float32 and out.device.type == "cpu" and torch.isfinite(out).all()
    # uint8 0..255 is scaled to [0, 1]: the same pixels in both forms give the same features.
    as_uint8 = (images[:2] * 255).round().to(torch.uint8)
    torch.testing.assert_close(enc(as_uint8), enc(as_uint8.float() / 255), rtol=0, atol=1e-6)
    # Other sizes are resized to input_size; the result is still [B, dim].
    assert enc(torch.rand(3, 3, 90, 70)).shape == (3, 256)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc(torch.rand(2, 1, SIZE, SIZE))
    prov = enc.provenance()
    assert prov["random_init"] is True and len(prov["weights_sha256"]) == 64
    assert prov["n_params"] == sum(p.numel() for p in enc.model.parameters())


def test_random_init_provenance_hash_follows_the_weights() -> None:
    torch.manual_seed(3)
    a = _encoder().provenance()["weights_sha256"]
    torch.manual_seed(3)
    b = _encoder().provenance()["weights_sha256"]
    torch.manual_seed(4)
    c = _encoder().provenance()["weights_sha256"]
    assert a == b != c


@pytest.mark.slow
def test_real_arch_efficientnet_b2_dim() -> None:
    torch.manual_seed(0)
    enc = ImageEncoder(ImageEncoderConfig(arch="tf_efficientnet_b2"))
    assert enc.dim == 1408
    out = enc(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1408) and torch.isfinite(out).all()
    # The name Savchenko's files were made with still resolves (timm maps it to tf_efficientnet_b2,
    # with a deprecation warning).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert ImageEncoder(ImageEncoderConfig(arch="tf_efficientnet_b2_ns")).dim == 1408


def _write(fmt: str, model: torch.nn.Module, path: Path) -> None:
    sd = model.state_dict()
    if fmt == "state_dict.pt":
        torch.save(sd, path)
    elif fmt == "nested_module_prefix.pth":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif fmt == "model_key.bin":
        torch.save({"model": sd, "optimizer": {}}, path)
    elif fmt == "file.safetensors":
        save_safetensors(sd, path)


@pytest.mark.parametrize(
    "fmt", ["state_dict.pt", "nested_module_prefix.pth", "model_key.bin", "file.safetensors"]
)
def test_weights_round_trip_formats(tmp_path: Path, images: torch.Tensor, fmt: str) -> None:
    model = _timm(seed=7)
    path = tmp_path / fmt
    _write(fmt, model, path)
    enc = _encoder(path)
    feats = enc(images[:2])
    assert not torch.equal(feats, _encoder()(images[:2]))  # a random init differs from the loaded one
    mean = torch.tensor(enc.cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.cfg.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = model((images[:2] - mean) / std)
    # the encoder runs channels_last: its kernels may differ from NCHW in the last bits
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
    prov = enc.provenance()
    assert prov["random_init"] is False and prov["weights_sha256"] == sha256_file(path)


def test_pickled_whole_module_needs_opt_in(tmp_path: Path, images: torch.Tensor) -> None:
    model = _timm(seed=11)
    path = tmp_path / "enet_b2_8.pt"
    torch.save(model, path)  # what the EmotiEffLib enet_b2_*.pt releases are
    with pytest.raises(ConfigError, match="allow_pickle") as info:
        _encoder(path)
    assert "pickled" in str(info.value) and "convert-weights" in str(info.value)
    with pytest.raises(ConfigError, match="allow_pickle"):
        load_state_dict(path, allow_pickle=False)
    enc = _encoder(path, allow_pickle=True)
    # Re-saving as safetensors (what `aver convert-weights` does) gives the same features.
    converted = tmp_path / "enet_b2_8.safetensors"
    save_safetensors(load_state_dict(path, allow_pickle=True), converted)
    assert torch.equal(enc(images[:3]), _encoder(converted)(images[:3]))
    assert torch.equal(enc(images[:3]), _encoder(_saved_sd(model, tmp_path))(images[:3]))


def _saved_sd(model: torch.nn.Module, tmp_path: Path) -> Path:
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    return path


def test_classifier_bearing_state_dict_loads_headless(tmp_path: Path, images: torch.Tensor) -> None:
    with_head = _timm(num_classes=8, seed=5)
    path = tmp_path / "enet_8classes.pt"
    torch.save(with_head.state_dict(), path)
    enc = _encoder(path)
    assert "classifier.weight" not in enc.model.state_dict()
    with_head.reset_classifier(0)  # same backbone, head removed: must give identical embeddings
    mean = torch.tensor(enc.cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.cfg.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = with_head((images[:2] - mean) / std)
    torch.testing.assert_close(enc(images[:2]), expected, rtol=1e-4, atol=1e-5)  # channels_last vs NCHW


def test_wrong_arch_state_dict_is_refused_with_a_guess(tmp_path: Path) -> None:
    path = tmp_path / "small.safetensors"
    save_safetensors(_timm("test_efficientnet").state_dict(), path)
    with pytest.raises(ConfigError, match="efficientnet_b0") as info:
        _encoder(path, arch="efficientnet_b0")
    msg = str(info.value)
    assert "missing" in msg and "seems to be for test_efficientnet" in msg


def test_missing_weight_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "state_vggface2_enet2.pt"
    with pytest.raises(MissingWeightsError, match="state_vggface2_enet2.pt"):
        _encoder(path)


def test_save_safetensors_handles_shared_storage(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32)
    sd = {"a": base.view(3, 4), "b": base.view(3, 4).t(), "c": base[:4]}
    sha = save_safetensors(sd, tmp_path / "w.safetensors")
    assert sha == sha256_file(tmp_path / "w.safetensors")
    back = load_state_dict(tmp_path / "w.safetensors", allow_pickle=False)
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_encode_batched_is_independent_of_n(images: torch.Tensor) -> None:
    enc = _encoder()
    five = enc.encode_batched(images, batch_size=4)  # forwards: [0..3], [4 + 3 pads]
    three = enc.encode_batched(images[:3], batch_size=4)  # forwards: [0..2 + 1 pad]
    last = enc.encode_batched(images[4:], batch_size=4)  # forwards: [4 + 3 pads]
    assert five.shape == (5, enc.dim) and three.shape == (3, enc.dim)
    # Same forward shape, same position in the batch: bit-identical on CPU.
    assert torch.equal(five[:3], three)
    assert torch.equal(five[4:], last)
    assert enc.encode_batched(images[:0], batch_size=4).shape == (0, enc.dim)
    # CPU kernels happen to be batch-invariant; on GPU the algorithm depends on the batch shape, which
    # is why every forward must have exactly batch_size images.
    shapes: list[tuple[int, ...]] = []
    hook = enc.model.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    enc.encode_batched(images, batch_size=4)
    enc.encode_batched(images[:1], batch_size=3)
    hook.remove()
    assert shapes == [(4, 3, SIZE, SIZE)] * 2 + [(3, 3, SIZE, SIZE)]
    assert torch.equal(enc.encode_batched(images.numpy(), batch_size=4), five)


# ----------------------------------------------------------------------------------------------- audio


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def _reference(enc: AudioEncoder, wave: np.ndarray, normalise: bool) -> tuple[torch.Tensor, ...]:
    x = torch.from_numpy(wave)[None]
    if normalise:
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    with torch.inference_mode():
        return enc.model(x, output_hidden_states=True).hidden_states


def test_audio_encoder_shapes_and_layers(tiny: dict[str, str]) -> None:
    enc = AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(0, -1, 1)))
    assert enc.dim == 32 and enc.frame_rate_hz == 50.0 and enc.do_normalize
    wave = _wave(1.0)
    out = enc(wave)
    assert out.shape == (49, 3, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert enc(_wave(2.0)).shape[0] == 99 == enc.num_frames(32000)
    hs = _reference(enc, wave, normalise=True)
    torch.testing.assert_close(out[:, 0], hs[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1], hs[2][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 2], hs[1][0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="too short"):
        enc(np.zeros(300, np.float32))
    prov = enc.provenance()
    model_file = Path(tiny["audio_model"]) / "model.safetensors"
    assert prov["weights_sha256"] == sha256_file(model_file) and prov["layers"] == [0, -1, 1]
    assert prov["num_hidden_layers"] == 2 and prov["hidden_size"] == 32


def test_audio_layers_out_of_range(tiny: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(3,)))
    with pytest.raises(ConfigError, match="out of range"):
        AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(-4,)))


def test_audio_normalisation_follows_preprocessor_config(tiny: dict[str, str], tmp_path: Path) -> None:
    wave = _wave(0.5, seed=2) + 0.3  # an offset that normalisation removes
    no_fe = tmp_path / "no_fe"
    shutil.copytree(tiny["audio_model"], no_fe)
    (no_fe / "preprocessor_config.json").unlink()
    enc = AudioEncoder(AudioEncoderConfig(model=str(no_fe), layers=(-1,)))
    assert enc.do_normalize  # absent config: normalise, as wav2vec2-large-robust does
    torch.testing.assert_close(enc(wave)[:, 0], _reference(enc, wave, True)[-1][0], rtol=1e-5, atol=1e-5)

    raw = tmp_path / "raw"
    shutil.copytree(tiny["audio_model"], raw)
    fe_path = raw / "preprocessor_config.json"
    fe_path.write_text(json.dumps({**json.loads(fe_path.read_text()), "do_normalize": False}))
    enc_raw = AudioEncoder(AudioEncoderConfig(model=str(raw), layers=(-1,)))
    assert not enc_raw.do_normalize
    out = enc_raw(wave)[:, 0]
    torch.testing.assert_close(out, _reference(enc_raw, wave, False)[-1][0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, enc(wave)[:, 0], atol=1e-3)


def _offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_audio_hub_id_offline_raises_missing_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _offline_hub(monkeypatch, tmp_path / "empty_cache")
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError) as info:
        AudioEncoder(AudioEncoderConfig(model="facebook/wav2vec2-large-robust"))
    assert time.perf_counter() - start < 5.0
    msg = str(info.value)
    assert "`hf download facebook/wav2vec2-large-robust`" in msg and "--audio-model" in msg
    with pytest.raises(MissingWeightsError, match="folder not found"):
        AudioEncoder(AudioEncoderConfig(model=str(tmp_path / "no" / "such" / "folder")))


def test_audio_from_hub_cache_records_revision(
    tiny: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The layout huggingface_hub writes: blobs named by sha256, snapshots/<commit>/ symlinks, refs/main.
    repo = tmp_path / "hub" / "models--aver-test--w2v-tiny"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for f in Path(tiny["audio_model"]).iterdir():
        sha = sha256_file(f)
        shutil.copy(f, repo / "blobs" / sha)
        os.symlink(f"../../blobs/{sha}", repo / "snapshots" / revision / f.name)
    _offline_hub(monkeypatch, tmp_path / "hub")
    enc = AudioEncoder(AudioEncoderConfig(model="aver-test/w2v-tiny", layers=(-1,)))
    prov = enc.provenance()
    assert prov["source"] == "hub" and prov["revision"] == revision
    assert prov["weights_sha256"] == sha256_file(Path(tiny["audio_model"]) / "model.safetensors")
    local = AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(-1,)))
    assert torch.equal(enc(_wave(0.3)), local(_wave(0.3)))


# ----------------------------------------------------------------------------------------------- tiny


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_tiny_models_deterministic_and_idempotent(tiny: dict[str, str], tmp_path: Path) -> None:
    first_root = Path(tiny["image_weights"]).parents[1]
    other = materialise_tiny_models(tmp_path / "again")
    assert _manifest(first_root)["files"] == _manifest(tmp_path / "again")["files"]
    assert sha256_file(other["image_weights"]) == sha256_file(tiny["image_weights"])
    # Same paths, nothing rewritten on a second call.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert materialise_tiny_models(tmp_path / "again") == other
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*") if p.is_file()}
    # A damaged file is noticed and rebuilt.
    Path(other["image_weights"]).write_bytes(b"corrupt")
    materialise_tiny_models(tmp_path / "again")
    assert sha256_file(other["image_weights"]) == sha256_file(tiny["image_weights"])
    assert not list((tmp_path / "again").glob(".staging-*"))


@pytest.mark.slow
def test_tiny_models_concurrent_processes(tiny: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "shared"
    code = (
        "import sys; from extract.tiny import materialise_tiny_models; materialise_tiny_models(sys.argv[1])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    expected = _manifest(Path(tiny["image_weights"]).parents[1])["files"]
    assert _manifest(root)["files"] == expected
    assert {rel: sha256_file(root / rel) for rel in expected} == expected


def test_tiny_perceiver_config_runs_optical_flow() -> None:
    from transformers import PerceiverForOpticalFlow

    cfg = tiny_perceiver_config()
    assert list(cfg.train_size) == [32, 32]
    torch.manual_seed(0)
    model = PerceiverForOpticalFlow(cfg).eval()
    with torch.inference_mode():
        flow = model(inputs=torch.rand(1, 2, 27, 32, 32) * 2 - 1).logits
    assert flow.shape == (1, 32, 32, 2) and torch.isfinite(flow).all()


def test_long_audio_is_encoded_in_overlapping_windows(tiny: dict[str, str]) -> None:
    """Minutes of audio: windows tile the output frames exactly once, each keeping its centre, and a
    clip within ``window_s`` is still one forward over the whole clip."""
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 7)).astype(np.float32)
    whole = AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(-1,)))
    short = AudioEncoder(
        AudioEncoderConfig(model=tiny["audio_model"], layers=(-1,), window_s=2.0, context_s=0.5)
    )
    spans = short.windows(len(wave))
    assert len(spans) > 3 and spans[0][2] == 0
    kept = [d - c for _, _, c, d in spans]
    assert sum(kept) == whole.num_frames(len(wave))  # every frame once
    for a, b, _, _ in spans:
        assert b - a <= 2.0 * 16000 + 400 and a % 320 == 0
    out_long, out_whole = short(wave), whole(wave)
    assert out_long.shape == out_whole.shape
    # each window's kept frames are those of a forward over exactly its input span
    x = torch.from_numpy(
        short.feature_extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
    )
    a, b, c, d = spans[2]
    offset = sum(kept[:2])
    torch.testing.assert_close(out_long[offset : offset + d - c], short._forward(x[a:b])[c:d])
    assert torch.equal(whole(wave[:16000]), short(wave[:16000]))  # within window_s: unchanged


def test_late_config_fields_keep_old_cache_hashes() -> None:
    from aver.extract.config import ExtractConfig

    base = ExtractConfig(dataset="x")
    assert "window_s" not in base.hashed_dict()["audio"]
    changed = ExtractConfig(dataset="x", audio=AudioEncoderConfig(window_s=60.0))
    assert changed.hashed_dict()["audio"]["window_s"] == 60.0 and changed.config_hash() != base.config_hash()
    # flow.sigma: the default ("clip") changed the numbers, so it is hashed; "pixel" (what caches
    # written before the option hold) is not, so those caches resume with --set flow.sigma=pixel
    from aver.extract.config import FlowConfig

    assert base.hashed_dict()["flow"]["sigma"] == "clip"
    assert "sigma" not in ExtractConfig(dataset="x", flow=FlowConfig(sigma="pixel")).hashed_dict()["flow"]


def test_savchenko_weights_refuse_the_other_efficientnet_family(tmp_path: Path) -> None:
    from aver.extract.encoders.image import check_known_provenance

    for name in ("state_vggface2_enet2.pt", "enet_b2_8_best.pt", "enet_b2_7.safetensors"):
        with pytest.raises(ConfigError, match="tf_efficientnet_"):
            check_known_provenance(tmp_path / name, "efficientnet_b2")
        check_known_provenance(tmp_path / name, "tf_efficientnet_b2")  # the right family: fine
        check_known_provenance(tmp_path / name, "test_efficientnet")  # not the colliding family: not guessed
    check_known_provenance(tmp_path / "my_model.pt", "efficientnet_b2")  # unknown provenance: not guessed


def test_fragment_level_audio_encodes_each_fragment_and_keeps_the_tail(tiny: dict[str, str]) -> None:
    """DE-III's reading: fragments of fragment_s every fragment_hop_s, each normalised and encoded
    on its own and mean-pooled; the last fragment ends at the clip's end (no tail dropped)."""
    cfg = AudioEncoderConfig(model=tiny["audio_model"], layers=(0, -1), fragment_s=0.5, fragment_hop_s=0.25)
    enc = AudioEncoder(cfg, batch=3)
    wave = _wave(1.6, seed=4)  # 25,600 samples: whole fragments end at 24,000; the tail is 1,600 more
    spans = enc.fragments(len(wave))
    assert spans[:2] == [(0, 8000), (4000, 12000)] and spans[-1] == (len(wave) - 8000, len(wave))
    assert len(spans) == 6 and all(b - a == 8000 for a, b in spans)
    assert enc.frame_rate_hz == 4.0 and enc.num_frames(len(wave)) == 6
    out = enc(wave)
    assert out.shape == (6, 2, 32)
    for k in (0, 5):  # a fragment's vector is the mean of wav2vec2 over that fragment alone
        a, b = spans[k]
        hs = _reference(enc, wave[a:b], normalise=True)
        torch.testing.assert_close(out[k, 0], hs[0][0].mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out[k, 1], hs[-1][0].mean(0), rtol=1e-4, atol=1e-5)
    assert enc(wave[:3000]).shape == (1, 2, 32)  # shorter than one fragment: the clip is one fragment
    assert AudioEncoder(cfg, batch=16)(wave).allclose(out, atol=1e-5)  # batching changes nothing


def test_audio_layer_sweep_and_fragment_options_are_checked() -> None:
    from aver.errors import ConfigError
    from aver.extract.config import ExtractConfig
    from aver.overrides import apply_overrides

    cfg = apply_overrides(ExtractConfig("x"), ["audio.layers=0:25:4"])
    assert cfg.audio.layers == (0, 4, 8, 12, 16, 20, 24)
    assert "fragment_s" not in cfg.hashed_dict()["audio"]  # default: caches keep their hash
    frag = apply_overrides(ExtractConfig("x"), ["audio.fragment_s=1.0", "audio.fragment_hop_s=0.5"])
    assert frag.hashed_dict()["audio"]["fragment_s"] == 1.0 and frag.config_hash() != cfg.config_hash()
    with pytest.raises(ConfigError, match="skip audio"):
        apply_overrides(ExtractConfig("x"), ["audio.fragment_s=0.5", "audio.fragment_hop_s=1.0"])
    with pytest.raises(ConfigError, match="start:stop:step"):
        apply_overrides(ExtractConfig("x"), ["audio.layers=4:"])


def test_batched_wav2vec2_equals_one_clip_at_a_time(tiny: dict[str, str]) -> None:
    """encode_many pads clips to whole seconds and batches them with an attention mask: each clip's
    frames equal a forward over that clip alone, whatever clips share its batch (float tolerance)."""
    enc = AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(0, -1)), batch=3)
    waves = [_wave(s, seed=k) for k, s in enumerate((0.7, 1.3, 0.9, 1.6, 0.5))]
    many = enc.encode_many(waves)
    for w, got in zip(waves, many, strict=True):
        alone = enc(w)
        assert got.shape == alone.shape == (enc.num_frames(len(w)), 2, 32)
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)
    regrouped = enc.encode_many([waves[2], waves[4]])  # other company in the 1 s bucket
    torch.testing.assert_close(regrouped[0], many[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(regrouped[1], many[4], rtol=1e-4, atol=1e-4)
    single = AudioEncoder(AudioEncoderConfig(model=tiny["audio_model"], layers=(0, -1)), batch=1)
    assert torch.equal(single.encode_many(waves[:1])[0], single(waves[0]))  # batch 1: clip by clip
