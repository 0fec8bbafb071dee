"""aver.train.metric_losses against brute-force loops over every triplet, and the batch sampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from aver.train.metric_losses import PolarityBatchSampler, emotion_constraint_loss, polarity_of, triplet_loss

RAVDESS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
CREMA = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def _d(e, i, j) -> float:
    return float(sum((e[i][t] - e[j][t]) ** 2 for t in range(len(e[i]))))


def _hinge(x: float) -> float:
    return max(x, 0.0)


def _brute_triplet(e, y, margin, mining):
    """Loops over anchors and every (p, n): hard = per anchor max_p min_n, all = mean of positive hinges."""
    per_anchor, positives = [], []
    for a in range(len(y)):
        ps = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        ns = [n for n in range(len(y)) if y[n] != y[a]]
        if not ps or not ns:
            continue
        per_anchor.append(_hinge(max(_d(e, a, p) for p in ps) - min(_d(e, a, n) for n in ns) + margin))
        positives += [h for p in ps for n in ns if (h := _d(e, a, p) - _d(e, a, n) + margin) > 0]
    if mining == "hard":
        return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0
    return sum(positives) / len(positives) if positives else 0.0


def _brute_emotion(e, y, pol, alpha, beta, mining):
    """Eq. 16 by loops; neutral anchors use eq. 13 against all other classes."""
    per_anchor, positives = [], []
    idx = range(len(y))
    for a in idx:
        s = pol[y[a]]
        ps = [p for p in idx if p != a and y[p] == y[a]]
        if s == 0:
            terms = [(ps, [n for n in idx if y[n] != y[a]], alpha)]
        else:
            rel = [r for r in idx if y[r] != y[a] and pol[y[r]] == s]
            opp = [n for n in idx if pol[y[n]] == -s]
            terms = [(ps, rel, alpha), (rel, opp, beta)]
        terms = [t for t in terms if t[0] and t[1]]
        if not terms:
            continue
        per_anchor.append(
            sum(_hinge(max(_d(e, a, x) for x in f) - min(_d(e, a, z) for z in n) + m) for f, n, m in terms)
        )
        for f, n, m in terms:
            positives += [h for x in f for z in n if (h := _d(e, a, x) - _d(e, a, z) + m) > 0]
    if mining == "hard":
        return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0
    return sum(positives) / len(positives) if positives else 0.0


def _batch(seed: int, n: int = 14, dim: int = 3, n_classes: int = 8):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.4
    labels = torch.randint(0, n_classes, (n,), generator=g)
    return emb, labels


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
def test_triplet_matches_brute_force(mining, margin):
    for seed in range(4):
        emb, y = _batch(seed, n_classes=4)
        got = triplet_loss(emb, y, margin=margin, mining=mining)
        want = _brute_triplet(emb.tolist(), y.tolist(), margin, mining)
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_triplet_hand_made_values():
    # 1-D points: class 0 at 0 and 1, class 1 at 3. Anchor 0: hardest p d=1, hardest n d=9.
    emb = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    y = torch.tensor([0, 0, 1, 1])
    # anchors: 0 -> [1 - 9 + m]+, 1 -> [1 - 4 + m]+, 2 -> [0.25 - 4 + m]+, 3 -> [0.25 - 6.25 + m]+
    assert triplet_loss(emb, y, margin=3.5).item() == pytest.approx((0 + 0.5 + 0 + 0) / 4)
    assert triplet_loss(emb, y, margin=3.5, reduction="sum").item() == pytest.approx(0.5)
    # batch-all: positive hinges over (a,p,n): a=1,p=0,n=2: 1-4+3.5=0.5; a=2,p=3,n=1: .25-4+3.5<0 ...
    assert triplet_loss(emb, y, margin=3.5, mining="all").item() == pytest.approx(
        _brute_triplet(emb.tolist(), y.tolist(), 3.5, "all")
    )


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("alpha,beta", [(0.2, 0.2), (0.5, 0.1), (0.0, 1.0)])
def test_emotion_constraint_matches_brute_force(mining, alpha, beta):
    pol = polarity_of(RAVDESS)
    for seed in range(4):
        emb, y = _batch(10 + seed, n=16)
        got = emotion_constraint_loss(emb, y, pol, alpha=alpha, beta=beta, mining=mining)
        want = _brute_emotion(emb.tolist(), y.tolist(), pol.tolist(), alpha, beta, mining)
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_emotion_constraint_hand_made():
    # classes: happy (+), calm (+), sad (-). 1-D embeddings.
    pol = polarity_of(["happy", "calm", "sad"])
    emb = torch.tensor([[0.0], [0.5], [1.0], [2.0]])
    y = torch.tensor([0, 0, 1, 2])
    alpha, beta = 0.5, 0.5
    # anchor 0 (happy): p=1 (d .25), r=2 (d 1), n=3 (d 4): [.25-1+.5]+=0 ; [1-4+.5]+=0
    # anchor 1 (happy): p=0 (.25), r=2 (.25), n=3 (2.25): [.25-.25+.5]=.5 ; [.25-2.25+.5]+=0
    # anchor 2 (calm): no positive -> term1 invalid; r2 in {0,1} farthest d=1, n=3 d=1: [1-1+.5]=.5
    # anchor 3 (sad): no positive, no related -> contributes nothing
    assert emotion_constraint_loss(emb, y, pol, alpha, beta).item() == pytest.approx((0 + 0.5 + 0.5) / 3)


def test_losses_without_valid_triplets_are_zero_with_grad():
    emb = torch.randn(3, 4, requires_grad=True)
    for loss in (
        triplet_loss(emb, torch.tensor([0, 1, 2])),
        triplet_loss(emb, torch.tensor([0, 0, 0]), mining="all"),
        emotion_constraint_loss(emb, torch.tensor([0, 1, 2]), polarity_of(["happy", "sad", "neutral"])),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.all(emb.grad == 0)


@pytest.mark.parametrize("mining", ["hard", "all"])
def test_gradients_flow_and_training_reduces_the_loss(mining):
    pol = polarity_of(CREMA)
    emb, y = _batch(3, n=18, dim=4, n_classes=6)
    emb = emb.float().requires_grad_(True)
    opt = torch.optim.SGD([emb], lr=0.05)
    first = None
    for _ in range(30):
        loss = emotion_constraint_loss(emb, y, pol, 0.3, 0.3, mining) + triplet_loss(emb, y, 0.3, mining)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(emb.grad).all()
        opt.step()
    assert loss.item() < first


def test_polarity_of_names_and_codes():
    assert polarity_of(RAVDESS).tolist() == [0, 1, 1, -1, -1, -1, -1, 1]
    assert polarity_of(CREMA).tolist() == [-1, -1, -1, 1, 0, -1]
    assert polarity_of(["Surprise", "Fear", "Anger", "Happiness"]).tolist() == [1, -1, -1, 1]
    with pytest.raises(ValueError, match="bored"):
        polarity_of(["happy", "bored"])


def test_bad_arguments_raise():
    emb, y = _batch(0)
    with pytest.raises(ValueError):
        triplet_loss(emb, y, mining="semi")
    with pytest.raises(ValueError):
        emotion_constraint_loss(emb, y, polarity_of(["happy", "sad"]))


def _labels(counts: list[int]) -> list[int]:
    out = [c for c, n in enumerate(counts) for _ in range(n)]
    g = torch.Generator().manual_seed(0)
    return [out[i] for i in torch.randperm(len(out), generator=g)]


@pytest.mark.parametrize(
    "names,counts,bs,k", [(CREMA, [30, 25, 27, 20, 40, 31], 32, 4), (RAVDESS, [6] + [13] * 7, 12, 2)]
)
def test_sampler_guarantees(names, counts, bs, k):
    labels = _labels(counts)
    pol = polarity_of(names)
    s = PolarityBatchSampler(labels, pol, batch_size=bs, k=k, seed=3)
    batches = list(s)
    assert len(batches) == len(s)
    used = Counter(i for b in batches for i in b)
    assert set(used) == set(range(len(labels)))  # every sample at least once
    assert sum(used.values()) <= 1.25 * len(labels)  # and about once
    for b in batches:
        assert len(b) == bs
        per_class = Counter(labels[i] for i in b)
        assert all(n >= 2 for n in per_class.values()), per_class  # positives for every class
        pols = {int(pol[c]) for c in per_class}
        assert {1, -1} <= pols


def test_sampler_is_seeded_and_epoch_dependent():
    labels = _labels([20, 20, 20, 20, 20, 20])
    pol = polarity_of(CREMA)
    a = PolarityBatchSampler(labels, pol, 8, 2, seed=1)
    b = PolarityBatchSampler(labels, pol, 8, 2, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(PolarityBatchSampler(labels, pol, 8, 2, seed=2)) != first


def test_sampler_drop_last_and_single_polarity():
    labels = _labels([12, 12, 12])
    pol = torch.tensor([-1, -1, 0])  # no positive class: only the negative one is required
    s = PolarityBatchSampler(labels, pol, 8, 4, drop_last=True)
    batches = list(s)
    assert len(batches) == len(s) == 9 // 2  # 3 chunks per class, 2 per batch, one chunk left over
    assert all(len(b) == 8 for b in batches)
    assert all(any(pol[labels[i]] == -1 for i in b) for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat) == 32  # no refills needed: nothing repeats
    assert len(PolarityBatchSampler(labels, pol, 8, 4)) == 5  # without drop_last the ninth chunk is used
    with pytest.raises(ValueError):
        PolarityBatchSampler(labels, pol, 6, 4)
    with pytest.raises(ValueError):
        PolarityBatchSampler(labels, pol, 4, 4)


def test_sampler_pairs_exist_in_batches_for_the_emotion_loss():
    """With the sampler, eq. 16 has valid terms in every batch (the point of the sampler)."""
    labels = _labels([12] * 8)
    pol = polarity_of(RAVDESS)
    y = torch.tensor(labels)
    emb = torch.zeros(len(labels), 2)
    for b in PolarityBatchSampler(labels, pol, 12, 3):
        loss = emotion_constraint_loss(emb[b], y[b], pol, alpha=0.2, beta=0.3)
        assert loss.item() > 0  # all at one point: every valid term equals its margin


def test_sampler_refuses_batches_without_a_free_place_and_always_ends():
    """batch_size // k must leave a place beside one chunk per polarity (else neutral chunks could
    never be placed and the schedule would not end); with room it covers every sample."""
    import numpy as np

    from aver.train.metric_losses import PolarityBatchSampler, polarity_of

    labels = np.repeat(np.arange(4), 12)
    polarity = polarity_of(["neutral", "happy", "sad", "angry"])
    with pytest.raises(ValueError, match="no place beside one chunk"):
        PolarityBatchSampler(labels, polarity, 8, k=4)
    sampler = PolarityBatchSampler(labels, polarity, 8, k=2, seed=1)
    seen = {i for b in sampler for i in b}
    assert seen == set(range(48))
