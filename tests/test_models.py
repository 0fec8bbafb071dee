"""DE-III model family: padding never matters, every variant trains, IFE and PAE weights are proper."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from aver.train.models import (
    ENCODERS,
    VARIANTS,
    DE3Config,
    build_encoder,
    create_model,
    pair_frames_with_flow,
    variant_config,
)
from aver.train.models.conformer import ConvModule
from aver.train.models.de3 import IFE_MODES, InterModalAttention, masked_max

D_FRAMES, D_FLOW, D_AUDIO, N_OUT = 12, 12, 10, 3
BASE = DE3Config(
    d_frames=D_FRAMES,
    d_flow=D_FLOW,
    d_audio=D_AUDIO,
    n_outputs=N_OUT,
    d_model=16,
    d_hidden=24,
    n_heads=2,
    blocks_audio=1,
    blocks_frames=2,
    blocks_flow=1,
    head_hidden=8,
    conv_kernel=5,
    dropout=0.1,
)
TOL = {"atol": 1e-5, "rtol": 1e-5}
FUSED_VISUAL = {"pae", "temporal_concat", "channel_concat", "sum", "early"}  # front-ends with OV-fusion


def make_clip(seed: int, n_frames: int, n_audio: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.randn(n_frames, D_FRAMES, generator=g),
        "flow": torch.randn(n_frames - 1, D_FLOW, generator=g),
        "audio": torch.randn(n_audio, D_AUDIO, generator=g),
    }


def collate(clips: list[dict[str, torch.Tensor]], garbage: float = 0.0) -> dict[str, torch.Tensor]:
    """Pad to the longest clip; ``garbage`` > 0 fills padding with large noise instead of zeros."""
    g = torch.Generator().manual_seed(123)
    batch = {}
    for key, len_key in (("frames", "frame_lengths"), ("flow", "flow_lengths"), ("audio", "audio_lengths")):
        lengths = torch.tensor([c[key].shape[0] for c in clips])
        out = garbage * torch.randn(len(clips), int(lengths.max()), clips[0][key].shape[1], generator=g)
        for i, c in enumerate(clips):
            out[i, : lengths[i]] = c[key]
        batch[key], batch[len_key] = out, lengths
    return batch


# --- encoders -------------------------------------------------------------------------------------


ENCODER_OPTIONS = [
    *((kind, {}) for kind in sorted(ENCODERS)),
    ("conformer", {"pos_enc": "none"}),  # the default is relative positions
    ("conformer", {"conv_norm": "batch"}),
    ("conformer", {"ff_dim": 8}),
]


@pytest.mark.parametrize(("kind", "options"), ENCODER_OPTIONS)
def test_encoder_ignores_padding(kind, options):
    torch.manual_seed(0)
    enc = build_encoder(kind, 7, d_model=16, d_out=24, n_blocks=2, n_heads=2, conv_kernel=5, **options).eval()
    short, long = torch.randn(5, 7), torch.randn(11, 7)
    batch = 50.0 * torch.randn(2, 11, 7)
    batch[0], batch[1, :5] = long, short
    with torch.no_grad():
        alone, _ = enc(short[None], torch.tensor([5]))
        mixed, lengths = enc(batch, torch.tensor([11, 5]))
    assert mixed.shape == (2, 11, 24) and lengths.tolist() == [11, 5]
    torch.testing.assert_close(mixed[1, :5], alone[0], **TOL)
    assert torch.all(mixed[1, 5:] == 0)


def test_conv_module_does_not_leak_padding():
    torch.manual_seed(0)
    conv = ConvModule(8, kernel=7, dropout=0.0).eval()
    x = torch.randn(1, 4, 8)
    padded_zero = torch.cat([x, torch.zeros(1, 8, 8)], dim=1)
    padded_noise = torch.cat([x, 50.0 * torch.randn(1, 8, 8)], dim=1)
    mask = torch.arange(12)[None] >= 4
    with torch.no_grad():
        alone = conv(x, torch.zeros(1, 4, dtype=torch.bool))
        for padded in (padded_zero, padded_noise):
            y = conv(padded, mask)
            torch.testing.assert_close(y[:, :4], alone, **TOL)
            assert torch.all(y[:, 4:] == 0)


def test_encoder_rejects_empty_or_overlong_clips():
    enc = build_encoder("conformer", 4, d_model=8, d_out=8, n_blocks=1, n_heads=2, conv_kernel=3)
    with pytest.raises(ValueError, match="1..6"):
        enc(torch.randn(2, 6, 4), torch.tensor([6, 0]))
    with pytest.raises(ValueError, match="1..6"):
        enc(torch.randn(2, 6, 4), torch.tensor([7, 3]))
    with pytest.raises(ValueError, match="unknown sequence encoder"):
        build_encoder("lstm", 4)


# --- the whole model, every variant ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_ignores_padding(name):
    torch.manual_seed(0)
    model = create_model(name, BASE).eval()
    clip, longer = make_clip(1, n_frames=5, n_audio=7), make_clip(2, n_frames=9, n_audio=13)
    with torch.no_grad():
        alone = model(collate([clip]))
        mixed = model(collate([longer, clip], garbage=30.0))
    heads = [h for h in ("video", "audio", "fusion") if f"logits_{h}" in alone]
    for head in heads:
        torch.testing.assert_close(mixed[f"logits_{head}"][1], alone[f"logits_{head}"][0], **TOL)
    n_v, n_a = int(alone["lengths_video"][0]), int(alone.get("lengths_audio", torch.zeros(1))[0])
    if "beta" in alone:
        torch.testing.assert_close(mixed["beta"][1, :n_v], alone["beta"][0], **TOL)
    if "attn_video" in alone:
        torch.testing.assert_close(mixed["attn_video"][1, :n_v, :n_a], alone["attn_video"][0], **TOL)
        assert torch.all(mixed["attn_video"][1, :, n_a:] == 0)
    if "attn_audio" in alone:
        torch.testing.assert_close(mixed["attn_audio"][1, :n_a, :n_v], alone["attn_audio"][0], **TOL)
        assert torch.all(mixed["attn_audio"][1, :, n_v:] == 0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_forward_backward(name):
    torch.manual_seed(0)
    cfg = variant_config(name, BASE)
    model = create_model(name, BASE).train()
    n_frames, n_audio = [6, 9, 4], [8, 5, 11]
    batch = collate([make_clip(i, f, a) for i, (f, a) in enumerate(zip(n_frames, n_audio, strict=True))])
    out = model(batch)

    t_visual = 9 if cfg.visual == "frames" else 8  # frames-only keeps the first frame; others pair with flow
    video_cross, audio_cross = IFE_MODES[cfg.ife]
    heads = ("video", "audio", "fusion") if cfg.audio else ("video",)
    expected = (
        {f"logits_{h}" for h in heads} | {"lengths_video"} | ({"lengths_audio"} if cfg.audio else set())
    )
    expected |= {"beta"} if cfg.visual in FUSED_VISUAL else set()
    expected |= {"attn_video"} if video_cross else set()
    expected |= {"attn_audio"} if audio_cross else set()
    assert set(out) == expected
    for head in heads:
        assert out[f"logits_{head}"].shape == (3, N_OUT)
    assert not cfg.audio or out["lengths_audio"].tolist() == n_audio
    assert out["lengths_video"].tolist() == (
        n_frames if cfg.visual == "frames" else [n - 1 for n in n_frames]
    )
    shapes = {"beta": (3, t_visual, 2), "attn_video": (3, t_visual, 11), "attn_audio": (3, 11, t_visual)}
    for key, shape in shapes.items():
        if key in out:
            assert out[key].shape == shape, key
    for key, value in out.items():
        assert torch.isfinite(value.float()).all(), key

    loss = sum(out[f"logits_{head}"].pow(2).mean() for head in heads)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} gets no gradient (unused parameter?)"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"


def test_variants_differ_only_in_their_switches():
    expected = {
        "de3": ("pae", "both", "conformer"),
        "none_ife": ("pae", "none", "conformer"),
        "none_ife_av": ("pae", "none", "conformer"),
        "ife_video_only": ("pae", "video", "conformer"),
        "ife_audio_only": ("pae", "audio", "conformer"),
        "flow_only": ("flow", "both", "conformer"),
        "frames_only": ("frames", "both", "conformer"),
        "temporal_concat": ("temporal_concat", "both", "conformer"),
        "channel_concat": ("channel_concat", "both", "conformer"),
        "sum": ("sum", "both", "conformer"),
        "early": ("early", "both", "conformer"),
        "transformer": ("pae", "both", "transformer"),
    }
    assert set(VARIANTS) == set(expected)
    other = variant_config("transformer", variant_config("none_ife_av", BASE))
    for name, switches in expected.items():
        cfg = variant_config(name, other)  # a variant resets every switch, whatever the base had
        assert (cfg.visual, cfg.ife, cfg.encoder) == switches
        assert cfg.audio == (name != "none_ife")
        assert (cfg.d_hidden, cfg.blocks_flow, cfg.encoder_audio) == (24, 1, "conformer")


def test_variant_needs_only_its_inputs():
    batch = collate([make_clip(0, 5, 6)])
    flow_batch = {k: v for k, v in batch.items() if not k.startswith("frame")}
    create_model("flow_only", BASE)(flow_batch)  # runs without frames
    with pytest.raises(ValueError, match="frames"):
        create_model("de3", BASE)(flow_batch)


# --- IFE, PAE and the helpers ---------------------------------------------------------------------


def test_ife_attention_is_a_distribution_over_valid_keys():
    torch.manual_seed(0)
    ife = InterModalAttention(8, dropout=0.0).eval()
    x, y = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    x_lengths, y_lengths = torch.tensor([5, 3]), torch.tensor([7, 4])
    out, alpha = ife(x, x_lengths, y, y_lengths)
    assert out.shape == (2, 5, 8) and alpha.shape == (2, 5, 7)
    torch.testing.assert_close(alpha[0].sum(-1), torch.ones(5))
    torch.testing.assert_close(alpha[1, :3].sum(-1), torch.ones(3))
    assert torch.all(alpha[1, :, 4:] == 0) and torch.all(alpha[1, 3:] == 0)
    assert torch.all(alpha[1, :3, :4] > 0) and torch.all(out[1, 3:] == 0)


def test_ife_scores_are_cosine_similarities():
    torch.manual_seed(0)
    ife = InterModalAttention(8, dropout=0.0)
    x, y = 100.0 * torch.randn(2, 5, 8), 100.0 * torch.randn(2, 7, 8)
    s = ife.scores(x, y)
    assert s.shape == (2, 5, 7) and s.min() >= -1.0 and s.max() <= 1.0
    reference = F.cosine_similarity(ife.query(x)[:, :, None], ife.key(y)[:, None], dim=-1)
    torch.testing.assert_close(s, reference, **TOL)
    ife.key.load_state_dict(ife.query.state_dict())  # with W_q = W_k a row is fully similar to itself
    torch.testing.assert_close(torch.diagonal(ife.scores(y, y), dim1=1, dim2=2), torch.ones(2, 7), **TOL)


def test_pae_weights_sum_to_one():
    torch.manual_seed(0)
    model = create_model("de3", BASE).eval()
    batch = collate([make_clip(i, n, 6) for i, n in enumerate([7, 4, 10])])
    with torch.no_grad():
        out = model(batch)
    beta, lengths = out["beta"], out["lengths_video"]
    assert lengths.tolist() == [6, 3, 9]
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(beta[b, :n].sum(-1), torch.ones(n))
        assert torch.all((beta[b, :n] > 0) & (beta[b, :n] < 1)) and torch.all(beta[b, n:] == 0)


def test_pair_frames_with_flow_aligns_flow_with_the_later_frame():
    frames = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    flow = -torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    v, o, lengths = pair_frames_with_flow(frames, torch.tensor([5, 3]), flow, torch.tensor([4, 2]))
    assert torch.equal(v, frames[:, 1:]) and torch.equal(o, flow) and lengths.tolist() == [4, 2]
    with pytest.raises(ValueError, match="n_flow == n_frames - 1"):
        pair_frames_with_flow(frames, torch.tensor([5, 3]), flow, torch.tensor([4, 3]))
    with pytest.raises(ValueError, match="at least 2 frames"):
        pair_frames_with_flow(frames, torch.tensor([5, 1]), flow, torch.tensor([4, 0]))


def test_masked_max_ignores_padding():
    x = -torch.rand(2, 4, 3) - 1.0  # valid values all negative; zero padding must not win the max
    x[1, 2:] = 0.0
    pooled = masked_max(x, torch.tensor([4, 2]))
    torch.testing.assert_close(pooled[1], x[1, :2].amax(0))
    assert torch.all(pooled < 0)


def test_config_is_validated():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        DE3Config(10, 10, 10, 2, d_model=16, n_heads=3)
    with pytest.raises(ValueError, match="visual"):
        DE3Config(10, 10, 10, 2, visual="optical")
    with pytest.raises(ValueError, match="odd"):
        DE3Config(10, 10, 10, 2, conv_kernel=4)
    with pytest.raises(ValueError, match="dropout"):
        DE3Config(10, 10, 10, 2, dropout=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        DE3Config(10, 0, 10, 2)
    with pytest.raises(ValueError, match="d_frames"):
        variant_config("sum", DE3Config(10, 12, 10, 2))
    with pytest.raises(ValueError, match="unknown model variant"):
        variant_config("ife_fusion", BASE)
    assert DE3Config.from_dict(BASE.to_dict()) == BASE
    with pytest.raises(ValueError, match="unknown DE3Config fields"):
        DE3Config.from_dict({**BASE.to_dict(), "n_layers": 3})


def test_ife_feed_forward_block_readings():
    """``linear`` is the paper's two linear layers (x'' = W2 W1 x'); ``residual`` refines x'."""
    from aver.train.models.de3 import InterModalAttention

    torch.manual_seed(0)
    x, y = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    lx, ly = torch.tensor([4, 3]), torch.tensor([5, 2])
    for ffb in ("linear", "residual"):
        ife = InterModalAttention(8, 0.0, ffb=ffb).eval()
        out, alpha = ife(x, lx, y, ly)
        attended = x + alpha @ ife.value(y)
        w1, w2 = ife.ffb[0], ife.ffb[1]
        expected = w2(w1(attended)) if ffb == "linear" else attended + ife.ffb(attended)
        torch.testing.assert_close(out[0], expected[0])
        torch.testing.assert_close(out[1, :3], expected[1, :3])
        assert torch.all(out[1, 3:] == 0)


def test_relative_positions_are_used():
    """Padding safety is in ``test_encoder_ignores_padding``; here: the positional term matters."""
    from aver.train.models.conformer import ConformerEncoder

    torch.manual_seed(0)
    enc = ConformerEncoder(
        6, d_model=8, d_out=8, n_blocks=1, n_heads=2, conv_kernel=3, pos_enc="relative"
    ).eval()
    x = torch.randn(1, 5, 6)
    with torch.no_grad():
        alone, _ = enc(x, torch.tensor([5]))
        enc.blocks[0].attn.pos.weight.zero_()
        enc.blocks[0].attn.bias_v.zero_()
        without, _ = enc(x, torch.tensor([5]))
    assert not torch.allclose(without, alone)


def test_checkpoints_of_older_models_rebuild_as_they_were():
    from aver.train.models.de3 import DE3Config

    old = {
        k: v
        for k, v in DE3Config(10, 10, 10, 2).to_dict().items()
        if k not in ("ife_ffb", "pos_enc", "audio")
    }
    cfg = DE3Config.from_dict(old)
    assert (cfg.ife_ffb, cfg.pos_enc, cfg.audio) == ("residual", "none", True)


def test_both_readings_of_the_conformer_widths():
    """'map ... to vectors of 1408-dimension ... hidden dimensionality of 512, 8 heads': width 512 with
    FFN 2048 and a 1408 projection (default), or width 1408 with FFN 512 (torchaudio's reading)."""
    from aver.train.models.de3 import DE3Config
    from aver.train.models.variants import create_model

    dims = (D_FRAMES, D_FLOW, D_AUDIO, 3)
    a = create_model("de3", DE3Config(*dims, d_model=16, d_hidden=44, n_heads=4, conv_kernel=3))
    b = create_model("de3", DE3Config(*dims, d_model=44, d_hidden=44, n_heads=4, ff_dim=16, conv_kernel=3))
    ff_a = a.audio_encoder.blocks[0].ff1.net[1]
    ff_b = b.audio_encoder.blocks[0].ff1.net[1]
    assert (ff_a.in_features, ff_a.out_features) == (16, 64) and (ff_b.in_features, ff_b.out_features) == (
        44,
        16,
    )
    out = b(collate([make_clip(0, 5, 6)]))
    assert out["logits_fusion"].shape == (1, 3)


def test_masked_batchnorm_pools_valid_frames_only():
    """Gulati's BatchNorm in the convolution module, made padding-safe: training statistics come from
    valid frames only, so a clip's output does not depend on its batch's padding."""
    from aver.train.models.conformer import MaskedBatchNorm

    torch.manual_seed(0)
    x = torch.randn(2, 6, 4)
    mask = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    noisy = x.clone()
    noisy[1, 3:] = 1e4  # garbage in the padding
    bn, ref = MaskedBatchNorm(4).train(), MaskedBatchNorm(4).train()
    out, out_noisy = bn(x, mask), ref(noisy, mask)
    torch.testing.assert_close(out[~mask], out_noisy[~mask])
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    valid = x[~mask]
    torch.testing.assert_close(
        out[~mask], (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + bn.eps)
    )
    bn.eval()
    torch.testing.assert_close(bn(noisy, mask)[~mask], bn(x, mask)[~mask])
