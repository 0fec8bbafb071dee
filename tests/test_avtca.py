"""AVT-CA (train/models/avtca.py): shapes, gradients, padding invariance, options, the paper size,
and older checkpoints' configs rebuilding the architecture they were trained with."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, fields

import pytest
import torch

from aver.overrides import from_dict
from aver.train.models.avtca import (
    LEGACY,
    PRESETS,
    VARIANTS,
    Avtca,
    AvtcaConfig,
    avtca_config,
)
from aver.train.models.conformer import MaskedBatchNorm

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
    assert heads == 1 and Avtca(avtca_config("tiny", "it_4"), 4).fuse_a.attn.heads == 4
    # Table 9's CT-n: Alg. 9 with n heads; Alg. 8's pair is single-head in every variant
    for variant, late in (("ct_1", 1), ("ct_4", 4), ("full", 4)):
        model = Avtca(avtca_config("tiny", variant), 4)
        assert (model.cross_a.heads, model.cross_v.heads) == (1, 1), variant
        assert (model.late_a.heads, model.late_v.heads) == (late, late), variant


def test_video_branch_is_algorithm_10_by_default():
    """conv block -> attention x local features at its resolution -> two IR blocks -> pool per frame."""
    cfg = avtca_config("paper")
    model = Avtca(cfg, 8)
    frames = model.frames
    assert {n.split(".")[0] for n, _ in frames.named_parameters()} == {
        "conv1",
        "modulator",
        "local",
        "blocks",
    }
    assert len(frames.blocks) == 2 and frames.out_dim == 232
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        v_conv = frames.conv1(x)
        assert v_conv.shape == (2, 29, 56, 56)  # Alg. 4 cuts this map into 28x28 quadrants
        assert frames.modulator(v_conv).shape == frames.local(v_conv).shape == v_conv.shape
        assert frames.eval()(x).shape == (2, 232)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frames.conv1)  # Alg. 1: conv, max pool
    assert model.video1[0].in_channels == 232
    full = Avtca(avtca_config("paper", frame_encoder="efficientface"), 8).frames
    assert full.out_dim == 1024 and hasattr(full, "stage4")


def test_transformer_blocks_use_batch_norm_and_the_post_mlp_norm():
    block = Avtca(avtca_config("tiny"), 4).fuse_a
    norms = (block.norm_k, block.norm_q, block.norm2, block.norm3)
    assert all(isinstance(n.norm, MaskedBatchNorm) for n in norms)
    layer = Avtca(avtca_config("tiny", block_norm="layer", post_mlp_norm=False), 4).fuse_a
    assert isinstance(layer.norm2.norm, torch.nn.LayerNorm) and not hasattr(layer, "norm3")


def _settle_batch_norms(model: Avtca, cfg: AvtcaConfig) -> Avtca:
    """A few training passes so BatchNorm's running statistics are not the identity, then eval."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(_batch(cfg, [9000, 3000, 16000], seed=seed + 10))
    return model.eval()


@pytest.mark.parametrize(
    ("variant", "overrides"),
    [
        ("full", {}),
        ("audio_only", {}),
        ("no_cross_attention", {}),
        ("no_transformer_fusion", {}),
        ("full", {"frame_encoder": "efficientface"}),
        ("full", {"block_norm": "layer", "post_mlp_norm": False}),
        ("full", {"late_attention": "cross", "audio_pool_stride": 2}),
    ],
)
def test_logits_do_not_depend_on_the_batch_padding(variant, overrides):
    """A short clip scores the same alone as beside a much longer clip (eval mode)."""
    torch.manual_seed(0)
    cfg = avtca_config("tiny", variant, **overrides)
    model = _settle_batch_norms(Avtca(cfg, len(CLASSES), CLASSES), cfg)
    together = _batch(cfg, [2400, 16000, 130])  # 130 samples: one MFCC frame, shorter than the kernels
    head = HEAD[cfg.modality]
    with torch.no_grad():
        both = model(together)[head]
        for i in (0, 2):
            alone = {k: v[i : i + 1] for k, v in together.items()}
            alone["wave"] = alone["wave"][:, : int(together["wave_lengths"][i])]
            torch.testing.assert_close(model(alone)[head][0], both[i], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(both[0], both[2])  # the clips differ, so the check can fail


@pytest.mark.parametrize("variant", ["full", "audio_only"])
def test_training_batch_statistics_ignore_the_padding(variant):
    """In training, BatchNorm pools valid frames only: what lies past a clip's end changes nothing."""
    torch.manual_seed(0)
    cfg = avtca_config("tiny", variant, dropout=0.0)
    model = Avtca(cfg, len(CLASSES), CLASSES).train()
    batch = _batch(cfg, [2400, 9000, 6000])
    longer = dict(batch, wave=torch.cat([batch["wave"], torch.randn(3, 5000)], dim=1))
    head = HEAD[cfg.modality]
    torch.testing.assert_close(model(longer)[head], model(batch)[head], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"block_norm": "layer"},
        {"post_mlp_norm": False},
        {"frame_encoder": "efficientface"},
        {"frame_encoder": "efficientface", "video_stem": "conv_bn_relu"},
        {"local_stride": 2},
        {"frame_pool": "max"},
        {"video_stem": "conv_bn_relu"},
        {"ir_channels": (16, 16, 24), "ir_strides": (2, 1, 2)},
        {"heads_pair": 2},
        {"heads_pair": None, "heads_cross": 2},
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
    with pytest.raises(ValueError, match="multiple of 16"):  # the extractor's halved quadrants
        avtca_config("tiny", image_size=40, frame_encoder="efficientface")
    with pytest.raises(ValueError, match="multiple of 16"):
        avtca_config("tiny", image_size=40, local_stride=2)
    with pytest.raises(ValueError, match="stride 1 keeps the width"):
        avtca_config("tiny", ir_channels=(16, 32), ir_strides=(2, 1))
    with pytest.raises(ValueError, match="one stride per"):
        avtca_config("tiny", ir_channels=(16, 16), ir_strides=(2,))
    with pytest.raises(ValueError, match="even"):
        avtca_config("tiny", ir_channels=(16, 15))
    with pytest.raises(ValueError, match="heads"):
        avtca_config("tiny", "full", heads_pair=3)
    with pytest.raises(ValueError, match="frame_encoder"):
        avtca_config("tiny", frame_encoder="resnet")
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
    assert (cfg.frame_encoder, cfg.block_norm, cfg.post_mlp_norm, cfg.heads_pair) == (
        "alg10",
        "batch",
        True,
        1,
    )
    model = Avtca(cfg, 8, [f"c{i}" for i in range(8)]).eval()
    assert sum(p.numel() for p in model.parameters()) == 916_673
    assert model.input_spec == {"n_frames": 15, "image_size": 224}
    start = time.perf_counter()
    with torch.no_grad():
        out = model(_batch(cfg, [32000]))
    assert time.perf_counter() - start < 20
    assert out["logits_fusion"].shape == (1, 8) and out["embedding"].shape == (1, 256)
    assert torch.isfinite(out["logits_fusion"]).all()


# asdict(AvtcaConfig()) and asdict of the tiny preset in aver 0.4 (before the Alg. 10 video branch,
# BatchNorm by default, Alg. 6's post-MLP norm and Alg. 8's own heads): frozen here on purpose.
OLD_DEFAULTS = {
    "n_frames": 15, "image_size": 224, "spectral": "avtca", "frame_channels": [29, 116, 232, 464, 1024],
    "stage_repeats": [4, 8, 4], "attention_reduction": 16, "attention_gate": "sigmoid",
    "video_stage1": [64, 64], "video_stage2": [128, 128], "audio_stage1": [64, 128],
    "audio_stage2": [256, 128], "audio_pool_stride": 1, "heads_transformer": 4, "heads_cross": 4,
    "mlp_ratio": 4.0, "dropout": 0.1, "block_norm": "layer", "late_attention": "self", "merge": "concat",
    "fusion_blocks": "both", "modality": "av",
}  # fmt: skip
OLD_TINY = {
    **OLD_DEFAULTS, "n_frames": 4, "image_size": 32, "frame_channels": [8, 16, 16, 16, 32],
    "stage_repeats": [1, 1, 1], "attention_reduction": 4, "video_stage1": [16, 16], "video_stage2": [16, 16],
    "audio_stage1": [16, 16], "audio_stage2": [16, 16],
}  # fmt: skip
# what aver 0.4 built from them: parameter count and a digest of the state dict's (name, shape) list
OLD_BUILT = {"paper": (2_280_282, "0426d90aa11b1204"), "tiny": (22_273, "f6550502268cdded")}
# aver 0.4's tiny model with _fill_by_name weights, eval mode, on _batch(cfg, [9000, 4000], seed=0)
OLD_TINY_LOGITS = [
    [28.864900588989258, 6.7819061279296875, 17.305347442626953, -28.32524871826172],
    [28.600683212280273, 7.063570022583008, 17.160675048828125, -27.679492950439453],
]


def _state_digest(model: torch.nn.Module) -> str:
    items = sorted((k, list(v.shape)) for k, v in model.state_dict().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _fill_by_name(model: torch.nn.Module) -> None:
    """Deterministic weights from each tensor's name alone (not from the order modules are built)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            g = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
            v = torch.rand(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + v)
            elif t.ndim >= 2:
                t.copy_((v - 0.5) * 2 * 3**0.5 / t[0].numel() ** 0.5)
            else:
                t.copy_((1.0 if name.endswith("weight") else 0.0) + (v - 0.5) * 0.4)


@pytest.mark.parametrize("preset", ["paper", "tiny"])
def test_a_saved_config_from_before_the_new_fields_rebuilds_its_architecture(preset):
    old = OLD_DEFAULTS if preset == "paper" else OLD_TINY
    cfg = AvtcaConfig.from_dict(json.loads(json.dumps(old)))
    assert cfg.frame_encoder == "efficientface" and cfg.block_norm == "layer" and not cfg.post_mlp_norm
    assert cfg.pair_heads == cfg.heads_cross == 4 and cfg.spectral == "mfcc10"  # the preset, renamed
    model = Avtca(cfg, 4)
    n_params = sum(p.numel() for p in model.parameters())
    assert (n_params, _state_digest(model)) == OLD_BUILT[preset]  # an old checkpoint loads strictly
    assert model.cross_a.heads == model.late_a.heads == 4 and not hasattr(model.fuse_a, "norm3")
    assert isinstance(model.fuse_a.norm_k.norm, torch.nn.LayerNorm)
    assert {f.name for f in fields(AvtcaConfig)} - set(old) == set(LEGACY)  # every new field, no other


def test_a_saved_config_from_before_the_new_fields_computes_what_it_did():
    cfg = AvtcaConfig.from_dict(OLD_TINY)
    model = Avtca(cfg, 4).eval()
    _fill_by_name(model)
    with torch.no_grad():
        logits = model(_batch(cfg, [9000, 4000]))["logits_fusion"]
    torch.testing.assert_close(logits, torch.tensor(OLD_TINY_LOGITS), atol=1e-4, rtol=1e-5)


def test_from_dict_round_trips_refuses_unknown_fields_and_keeps_saved_values():
    cfg = avtca_config("tiny", "ct_1", frame_pool="max")
    assert AvtcaConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown AvtcaConfig fields \\['n_heads'\\]"):
        AvtcaConfig.from_dict({**asdict(cfg), "n_heads": 4})
    saved = AvtcaConfig.from_dict({**OLD_TINY, "block_norm": "batch", "heads_cross": 2})
    assert saved.block_norm == "batch" and saved.pair_heads == 2 and saved.frame_encoder == "efficientface"
