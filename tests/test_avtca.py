"""AVT-CA (train/models/avtca.py): shapes, gradients, padding invariance, options and the paper size."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import pytest
import torch

from aver.overrides import from_dict
from aver.train.models.avtca import (
    PRESETS,
    VARIANTS,
    Avtca,
    AvtcaConfig,
    avtca_config,
)

CLASSES = ["neutral", "happy", "sad", "angry"]
HEAD = {"av": "logits_fusion", "audio": "logits_audio", "video": "logits_video"}


def _batch(cfg: AvtcaConfig, lengths: list[int], seed: int = 0) -> dict:
    """A shared-interface batch; samples past a clip's length are noise, which the model must ignore."""
    g = torch.Generator().manual_seed(seed)
    b, t, s = len(lengths), cfg.n_frames, cfg.image_size
    wave = torch.randn(b, max(lengths), generator=g) * 0.1
    return {
        "video": torch.randn(b, t, 3, s, s, generator=g),
        "wave": wave,
        "wave_lengths": torch.tensor(lengths, dtype=torch.int64),
        "labels": torch.arange(b) % len(CLASSES),
    }


def _loss(out: dict) -> torch.Tensor:
    (key,) = [k for k in out if k.startswith("logits")]
    return torch.nn.functional.cross_entropy(out[key], torch.arange(out[key].shape[0]) % len(CLASSES))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_runs_and_every_parameter_gets_a_finite_gradient(variant):
    torch.manual_seed(0)
    cfg = avtca_config("tiny", variant)
    model = Avtca(cfg, len(CLASSES), CLASSES)
    assert model.input_spec == {"n_frames": 4, "image_size": 32}
    out = model(_batch(cfg, [16000, 7000, 2500]))
    head = HEAD[cfg.modality]
    assert set(out) == {head, "embedding"}
    assert out[head].shape == (3, len(CLASSES)) and out["embedding"].shape[0] == 3
    assert torch.isfinite(out[head]).all() and torch.isfinite(out["embedding"]).all()
    _loss(out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{variant}: parameters built but unused: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, bad


def test_variants_build_only_their_blocks():
    names = {
        v: {n.split(".")[0] for n, _ in Avtca(avtca_config("tiny", v), 4).named_parameters()}
        for v in VARIANTS
    }
    assert names["full"] >= {"fuse_a", "fuse_v", "cross_a", "cross_v", "late_a", "late_v", "frames", "audio1"}
    assert not names["no_fusion"] & {"fuse_a", "fuse_v", "cross_a", "cross_v", "late_a", "late_v"}
    assert not names["no_cross_attention"] & {"cross_a", "late_a"} and "fuse_a" in names["no_cross_attention"]
    assert (
        not names["no_transformer_fusion"] & {"fuse_a", "fuse_v"}
        and "cross_a" in names["no_transformer_fusion"]
    )
    assert names["audio_only"] == {"audio1", "audio2", "classifier"}
    assert names["video_only"] == {"frames", "video1", "video2", "classifier"}
    heads = Avtca(avtca_config("tiny", "it_1"), 4).fuse_a.attn.heads
    assert heads == 1 and Avtca(avtca_config("tiny", "ct_1"), 4).cross_a.heads == 1


@pytest.mark.parametrize(
    ("variant", "overrides"),
    [
        ("full", {}),
        ("audio_only", {}),
        ("no_cross_attention", {}),
        ("full", {"block_norm": "batch", "late_attention": "cross", "audio_pool_stride": 2}),
    ],
)
def test_logits_do_not_depend_on_the_batch_padding(variant, overrides):
    """A short clip scores the same alone as beside a much longer clip (eval mode)."""
    torch.manual_seed(0)
    cfg = avtca_config("tiny", variant, **overrides)
    model = Avtca(cfg, len(CLASSES), CLASSES).eval()
    together = _batch(cfg, [2400, 16000, 130])  # 130 samples: one MFCC frame, shorter than the kernels
    head = HEAD[cfg.modality]
    with torch.no_grad():
        both = model(together)[head]
        for i in (0, 2):
            alone = {k: v[i : i + 1] for k, v in together.items()}
            alone["wave"] = alone["wave"][:, : int(together["wave_lengths"][i])]
            torch.testing.assert_close(model(alone)[head][0], both[i], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(both[0], both[2])  # the clips differ, so the check can fail


@pytest.mark.parametrize(
    "overrides",
    [
        {"block_norm": "batch"},
        {"late_attention": "cross"},
        {"late_attention": "none"},
        {"merge": "sum"},
        {"attention_gate": "product"},
        {"audio_pool_stride": 2},
        {"spectral": "logmel"},
    ],
)
def test_options_run_forward_and_backward(overrides):
    torch.manual_seed(0)
    cfg = avtca_config("tiny", "full", **overrides)
    model = Avtca(cfg, len(CLASSES), CLASSES)
    out = model(_batch(cfg, [9000, 4000]))
    _loss(out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    emb = out["embedding"].shape[1]
    assert emb == (16 if overrides.get("merge") == "sum" else 32)


def test_tiny_model_learns_a_small_batch():
    torch.manual_seed(0)
    cfg = avtca_config("tiny", "full", dropout=0.0)
    model = Avtca(cfg, len(CLASSES), CLASSES)
    batch = _batch(cfg, [8000, 6000, 5000, 7000])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = _loss(model(batch))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_config_validation_and_round_trip():
    cfg = avtca_config("tiny", "no_cross_attention", heads_transformer=2)
    again = from_dict(AvtcaConfig, json.loads(json.dumps(asdict(cfg))))
    assert again == cfg and isinstance(again.frame_channels, tuple)
    with pytest.raises(ValueError, match="nothing to fuse"):
        avtca_config("tiny", "full", modality="audio")
    with pytest.raises(ValueError, match="heads"):
        avtca_config("tiny", "full", heads_cross=3)
    with pytest.raises(ValueError, match="merge='sum'"):
        avtca_config("tiny", "full", merge="sum", audio_stage2=(16, 32))
    with pytest.raises(ValueError, match="fusion_blocks"):
        avtca_config("tiny", fusion_blocks="late")
    with pytest.raises(ValueError, match="multiple of 8"):
        avtca_config("tiny", image_size=36)
    with pytest.raises(ValueError, match="unknown AVT-CA variant"):
        avtca_config("tiny", "IT-2")
    with pytest.raises(ValueError, match="AvtcaConfig: unknown key 'n_heads'"):
        from_dict(AvtcaConfig, {"n_heads": 4})
    with pytest.raises(ValueError, match="spectral preset"):
        Avtca(avtca_config("tiny", spectral="nope"), 4)


def test_paper_preset_builds_and_runs_one_clip():
    train = PRESETS["paper"]["train"]
    assert train == {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.001, "batch_size": 8, "epochs": 128}
    cfg = avtca_config("paper")
    assert (cfg.n_frames, cfg.image_size, cfg.heads_transformer, cfg.heads_cross) == (15, 224, 4, 4)
    model = Avtca(cfg, 8, [f"c{i}" for i in range(8)]).eval()
    assert model.input_spec == {"n_frames": 15, "image_size": 224}
    start = time.perf_counter()
    with torch.no_grad():
        out = model(_batch(cfg, [32000]))
    assert time.perf_counter() - start < 20
    assert out["logits_fusion"].shape == (1, 8) and out["embedding"].shape == (1, 256)
    assert torch.isfinite(out["logits_fusion"]).all()
