"""Mocanu 2023 model: every variant and option trains, shapes, ablations, weights through the config."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from aver.errors import ConfigError
from aver.overrides import from_dict
from aver.train.backbones import resnet3d, resnet18_2d
from aver.train.metric_losses import emotion_constraint_loss, polarity_of, triplet_loss
from aver.train.models.mocanu2023 import (
    LEGACY,
    PRESETS,
    VARIANTS,
    CrossModalFusion,
    Mocanu2023,
    Mocanu2023Config,
    make_config,
)

RAVDESS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
CREMA = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
TABLE_VARIANTS = ["table1_at", "table1_vs", "table1_vs_vc", "table1_vs_vc_vt", "triplet"]
LENGTHS = [16000, 9000, 4000, 12000, 16000, 7000]  # different valid lengths, one shorter than a part


def _batch(cfg: Mocanu2023Config, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(LENGTHS)
    wave = torch.randn(len(LENGTHS), max(LENGTHS), generator=g)
    wave = wave * (torch.arange(wave.shape[1])[None, :] < lengths[:, None])  # zero-padded
    video = torch.randn(len(LENGTHS), cfg.n_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    # happy, happy, calm, sad, angry, neutral: eq. 16 has related and opposite partners
    labels = torch.tensor([2, 2, 1, 3, 4, 0])
    return {"video": video, "wave": wave, "wave_lengths": lengths, "labels": labels}


def _train_step(model: Mocanu2023, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(batch)
    (key,) = [k for k in out if k.startswith("logits")]
    loss = F.cross_entropy(out[key], batch["labels"])
    aux = model.aux_loss(out, batch)
    (loss if aux is None else loss + aux).backward()
    return out


def _assert_every_parameter_learns(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient (a module the variant does not use?)"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains(variant):
    torch.manual_seed(0)
    cfg = make_config("tiny", variant)
    model = Mocanu2023(cfg, len(RAVDESS), RAVDESS)
    out = _train_step(model, _batch(cfg))
    head = {"av": "logits_fusion", "audio": "logits_audio", "video": "logits_video"}[cfg.modality]
    assert set(out) == {head, "embedding"}
    assert out[head].shape == (len(LENGTHS), len(RAVDESS)) and torch.isfinite(out[head]).all()
    # eq. 11: the N x 2m' matrix (N x m' for one modality), flattened, is the metric-loss embedding
    width = cfg.d_fusion * (2 if cfg.modality == "av" else 1) * cfg.n_snippets
    assert cfg.snippet_pool == "flatten" and out["embedding"].shape == (len(LENGTHS), width)
    assert model.classifier.in_features == (width if cfg.head_layers == 0 else cfg.head_hidden)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(len(LENGTHS)))
    _assert_every_parameter_learns(model)
    names = {n.split(".")[0] + "." + n.split(".")[1] for n in dict(model.named_parameters()) if "." in n}
    assert ("video.spatial" in names) == (cfg.modality != "audio" and cfg.spatial)
    assert ("video.channel" in names) == (cfg.modality != "audio" and cfg.channel)
    assert ("audio.trunk" in names) == (cfg.modality != "video")
    assert ("video.trunk" in names) == (cfg.modality != "audio")
    assert ("fusion.weight" in dict(model.named_parameters())) == cfg.cross
    assert model.input_spec == {"n_frames": 8, "image_size": 64}


def test_variants_set_the_paper_ablations():
    full = make_config("tiny")
    assert (full.loss, full.cross, full.modality) == ("emotion", True, "av")
    vs = make_config("tiny", "table1_vs")
    assert (vs.spatial, vs.channel, vs.temporal_video, vs.modality, vs.loss) == (
        True, False, False, "video", "triplet"
    )  # fmt: skip
    # a variant applied on top of another variant gives the same as on the full model
    assert replace(make_config("tiny", "table1_vs"), **VARIANTS["no_cross"]) == make_config(
        "tiny", "no_cross"
    )
    assert make_config("tiny", "softmax", alpha=0.5).alpha == 0.5
    assert set(PRESETS) == {"paper", "tiny"}


@pytest.mark.parametrize(
    "options",
    [
        {"attn_residual": True},
        {"cross_weights": "literal", "cross_scale": True},
        {"snippet_pool": "mean"},
        {"embedding": "hidden", "head_layers": 2, "normalize_embedding": False},
        {"head_layers": 0, "mining": "all"},
        {"video_stage": 4},
        {"video_shortcut": "A", "audio_placement": "pad", "audio_normalize": "clip"},
        {"loss": "triplet", "mining": "all", "loss_weight": 2.0},
    ],
)
def test_every_option_trains(options):
    torch.manual_seed(1)
    cfg = make_config("tiny", **options)
    model = Mocanu2023(cfg, len(RAVDESS), RAVDESS)
    out = _train_step(model, _batch(cfg))
    assert torch.isfinite(out["logits_fusion"]).all()
    _assert_every_parameter_learns(model)
    if cfg.video_stage == 4:
        assert model.video.n_positions == 16  # 64 px -> 4x4 conv4 map
    if cfg.snippet_pool == "mean":
        assert out["embedding"].shape[1] == 2 * cfg.d_fusion
    if cfg.embedding == "hidden":
        assert out["embedding"].shape[1] == cfg.head_hidden and out["embedding"].norm(dim=1).ne(1).any()


@pytest.mark.parametrize("variant", ["full", "audio_only"])
def test_a_clip_does_not_depend_on_its_batch_mates_padding(variant):
    """Eval mode with per-clip normalisation: a clip's output is the same alone and padded in a batch."""
    torch.manual_seed(2)
    cfg = make_config("tiny", variant, audio_normalize="clip")
    model = Mocanu2023(cfg, len(RAVDESS), RAVDESS).eval()
    batch = _batch(cfg)
    with torch.no_grad():
        together = model(batch)
        for i in (1, 2):  # 9,000 and 4,000 valid samples of a 16,000-sample buffer
            n = LENGTHS[i]
            alone = {"video": batch["video"][i : i + 1], "wave": batch["wave"][i : i + 1, :n]}
            alone["wave_lengths"] = torch.tensor([n])
            alone = model(alone)
            for key, value in alone.items():
                assert torch.allclose(value[0], together[key][i], atol=1e-4), (key, i)


def test_cross_fusion_readings():
    a, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for weights in ("convex", "literal"):
        fusion = CrossModalFusion(4, weights)
        torch.nn.init.zeros_(fusion.weight)  # Corr = 0: uniform weights, both readings give the mean
        vt, at = fusion(a, v)
        assert torch.allclose(at, torch.tanh(a + a.mean(1, keepdim=True)), atol=1e-6)
        assert torch.allclose(vt, torch.tanh(v + v.mean(1, keepdim=True)), atol=1e-6)
    # convex: every attended row is a convex combination; literal: the columns sum to one instead
    a, v = torch.randn(2, 3, 4) * 3, torch.randn(2, 3, 4) * 3
    convex, literal = CrossModalFusion(4, "convex"), CrossModalFusion(4, "literal")
    literal.weight.data.copy_(convex.weight.data)
    corr = a @ convex.weight @ v.transpose(1, 2)
    for (wa, wv), rows in ((convex.weights(a, v), True), (literal.weights(a, v), False)):
        assert torch.allclose(wa.sum(-1 if rows else -2), torch.ones(2, 3))
        assert torch.allclose(wv.sum(-1 if rows else -2), torch.ones(2, 3))
    wa, wv = convex.weights(a, v)
    # row j of the attended audio is weighted by video segment j's column of Corr
    assert torch.allclose(wa[:, 1], corr[:, :, 1].softmax(-1)) and torch.allclose(
        wv[:, 1], corr[:, 1].softmax(-1)
    )
    vt, at = convex(a, v)
    assert torch.allclose(at, torch.tanh(a + wa @ a)) and torch.allclose(vt, torch.tanh(v + wv @ v))
    assert not torch.allclose(literal(a, v)[1], at, atol=1e-3)
    scaled = CrossModalFusion(4, "convex", scale=True)
    scaled.weight.data.copy_(convex.weight.data * 2)  # scale = 1/sqrt(4): the same weights as unscaled
    assert torch.allclose(scaled.weights(a, v)[0], wa, atol=1e-6)


def test_aux_loss_is_the_papers_metric_loss():
    torch.manual_seed(3)
    emb = F.normalize(torch.randn(6, 5), dim=1)
    labels = torch.tensor([2, 2, 1, 3, 4, 0])
    out, batch = {"embedding": emb}, {"labels": labels}
    emotion = Mocanu2023(make_config("tiny", alpha=0.3, beta=0.4, loss_weight=0.5), 8, RAVDESS)
    want = emotion_constraint_loss(emb, labels, polarity_of(RAVDESS), 0.3, 0.4, "hard")
    assert want > 0 and torch.allclose(emotion.aux_loss(out, batch), 0.5 * want)
    trip = Mocanu2023(make_config("tiny", "triplet", alpha=0.3, mining="all"), 8, RAVDESS)
    assert torch.allclose(trip.aux_loss(out, batch), triplet_loss(emb, labels, 0.3, "all"))
    assert Mocanu2023(make_config("tiny", "softmax"), 8, RAVDESS).aux_loss(out, batch) is None
    with pytest.raises(ValueError, match="polarity"):
        Mocanu2023(make_config("tiny"), 2, ["joy", "boredom"])
    Mocanu2023(make_config("tiny", "softmax"), 2, ["joy", "boredom"])  # no polarity needed


def test_config_checks_and_round_trip():
    cfg = make_config("tiny", "video_only")
    assert from_dict(Mocanu2023Config, asdict(cfg)) == cfg
    with pytest.raises(ValueError, match="cross"):
        make_config("tiny", "audio_only", cross=True)
    with pytest.raises(ValueError, match="modality"):
        make_config("tiny", modality="text")
    with pytest.raises(ValueError, match="video_depth"):
        make_config("tiny", video_depth=11)
    with pytest.raises(ValueError, match="variant"):
        make_config("tiny", "no_such_variant")
    with pytest.raises(ValueError, match="Mocanu2023Config: unknown key 'bogus'"):
        from_dict(Mocanu2023Config, {"n_snippets": 2, "bogus": 1})
    model = Mocanu2023(make_config("tiny"), 8, RAVDESS)
    with pytest.raises(ValueError, match="2 snippets of 4 frames at 64 px"):
        model.video(torch.zeros(1, 6, 3, 64, 64))


def test_paper_config_builds_and_runs_at_reduced_size():
    cfg = make_config("paper")
    model = Mocanu2023(cfg, len(RAVDESS), RAVDESS)
    assert model.input_spec == {"n_frames": 96, "image_size": 224}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.video.trunk) == 85_245_120  # Hara's resnet-101 without fc (checked against his code)
    assert (
        count(model.audio.trunk) == 11_176_512 - 2 * 64 * 7 * 7
    )  # torchvision resnet18 - fc, 1-channel conv1
    assert model.video.trunk.out_channels == 2048 and model.video.n_positions == 49
    assert model.video.channel.w_o.out_features == 49 and model.video.temporal.w_o.out_features == 512
    assert model.fusion.weight.shape == (512, 512) and model.classifier.in_features == 512
    assert model.hidden[0].in_features == 6 * 2 * 512  # eq. 11: N x 2m' flattened
    small = Mocanu2023(replace(cfg, image_size=64, n_snippets=2, audio_image_size=64), 8, RAVDESS).eval()
    batch = {"video": torch.randn(1, 32, 3, 64, 64), "wave": torch.randn(1, 20000)}
    batch["wave_lengths"] = torch.tensor([20000])
    with torch.no_grad():
        out = small(batch)
    assert out["logits_fusion"].shape == (1, 8) and torch.isfinite(out["logits_fusion"]).all()
    assert out["embedding"].shape == (1, 2 * 2 * 512)


def test_pretrained_weights_through_the_config(tmp_path):
    base = make_config("tiny")
    video = resnet3d(base.video_depth, base.video_width)
    audio = resnet18_2d(3, base.audio_width)  # an RGB ImageNet-style file for the 1-channel trunk
    with torch.no_grad():
        for p in [*video.parameters(), *audio.parameters()]:
            p.uniform_(-1, 1)
    hara = {"arch": "resnet-10", "state_dict": {f"module.{k}": v for k, v in video.state_dict().items()}}
    torch.save(hara, tmp_path / "r3d10.pth")
    save_file({k: v.contiguous() for k, v in audio.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    cfg = replace(
        base, video_weights=str(tmp_path / "r3d10.pth"), audio_weights=str(tmp_path / "r18.safetensors")
    )
    with pytest.raises(ConfigError, match=r"r3d10\.pth.*allow_pickle"):
        Mocanu2023(cfg, 8, RAVDESS)
    model = Mocanu2023(replace(cfg, allow_pickle=True), 8, RAVDESS)
    for k, v in video.state_dict().items():
        assert torch.equal(model.video.trunk.state_dict()[k], v), k
    assert torch.equal(model.audio.trunk.layer4[1].conv2.weight, audio.layer4[1].conv2.weight)
    assert torch.equal(model.audio.trunk.conv1.weight, audio.conv1.weight.sum(1, keepdim=True))
    wrong = replace(cfg, allow_pickle=True, video_depth=18)
    with pytest.raises(ConfigError, match="missing keys"):
        Mocanu2023(wrong, 8, RAVDESS)


@pytest.mark.parametrize("variant", TABLE_VARIANTS)
def test_table_variants_end_with_one_fully_connected_layer(variant):
    """Section 4.3: every row of Tables 1-2 (and Table 3's triplet row, the same numbers) "ends with
    one fully connected layer having the number of neurons equal to the total number of emotion
    classes" and is trained with the triplet loss; the full model keeps its hidden FC layer."""
    for preset in ("tiny", "paper"):
        cfg = make_config(preset, variant)
        assert (cfg.loss, cfg.head_layers) == ("triplet", 0)
    cfg = make_config("tiny", variant)
    model = Mocanu2023(cfg, len(RAVDESS), RAVDESS)
    after_fusion = [m for m in [*model.hidden.modules(), model.classifier] if isinstance(m, torch.nn.Linear)]
    assert after_fusion == [model.classifier] and model.classifier.out_features == len(RAVDESS)
    width = cfg.d_fusion * (2 if cfg.modality == "av" else 1) * cfg.n_snippets
    assert model.classifier.in_features == width
    assert not any(isinstance(m, torch.nn.ReLU | torch.nn.Dropout) for m in model.hidden.modules())
    # a table variant applied to another variant's config gives the same as on the full model
    assert replace(make_config("tiny", "full"), **VARIANTS[variant]) == cfg
    full = Mocanu2023(make_config("tiny", "full"), len(RAVDESS), RAVDESS)
    linears = [m for m in full.hidden.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 2 * 16 * 2
    assert replace(cfg, **VARIANTS["full"]) == make_config("tiny", "full")


def _old_saved_dict() -> dict:
    """A ``model_config`` as aver 0.4.0 saved it: no ``no_related_loss``, snippets averaged."""
    old = asdict(make_config("tiny", snippet_pool="mean"))
    for key in LEGACY:
        old.pop(key)
    return {**old, "spectral": "mocanu2023"}  # the spectrogram preset's former name


def test_a_config_saved_before_the_new_fields_rebuilds_the_old_model():
    old = _old_saved_dict()
    cfg = Mocanu2023Config.from_dict(old)
    assert cfg.snippet_pool == "mean" and cfg.no_related_loss == "none"  # saved value kept, LEGACY
    assert cfg.spectral == "spectrogram256"
    assert Mocanu2023Config.from_dict(asdict(make_config("tiny"))) == make_config("tiny")
    model = Mocanu2023(cfg, len(CREMA), CREMA)
    assert model.classifier.in_features == 16 and model.hidden[0].in_features == 2 * 16  # mean pooled
    saved = Mocanu2023(make_config("tiny", snippet_pool="mean"), len(CREMA), CREMA).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in saved.items()}
    model.load_state_dict(saved)  # strict: the same parameters
    with pytest.raises(ValueError, match="bogus"):
        Mocanu2023Config.from_dict({**old, "bogus": 1})
    # the old loss too: CREMA-D happy anchors had no metric term, now eq. 13
    emb = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    out, batch = {"embedding": emb}, {"labels": torch.tensor([3, 3, 4, 5])}  # happy x2, neutral, sad
    assert model.aux_loss(out, batch).item() == 0.0
    new = Mocanu2023(make_config("tiny", loss_weight=1.0), len(CREMA), CREMA)
    assert new.aux_loss(out, batch).item() == pytest.approx(triplet_loss(emb, batch["labels"], 0.2).item())
    assert new.aux_loss(out, batch).item() > 0
