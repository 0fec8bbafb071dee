"""aver.train.metric_losses against brute-force loops over every triplet, and the batch sampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from aver.train.metric_losses import (
    anchor_coverage,
    emotion_constraint_loss,
    metric_batch_sampler,
    polarity_of,
    related_classes,
    triplet_loss,
)

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
    """Eq. 16 by loops; anchors of a class with no related class in the class set ``pol`` (neutral,
    CREMA-D happy) use eq. 13 against all other classes."""
    per_anchor, positives = [], []
    idx = range(len(y))
    for a in idx:
        s = pol[y[a]]
        ps = [p for p in idx if p != a and y[p] == y[a]]
        if s == 0 or sum(1 for q in pol if q == s) < 2:
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


@pytest.mark.parametrize("names", [RAVDESS, CREMA])
@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("alpha,beta", [(0.2, 0.2), (0.5, 0.1), (0.0, 1.0)])
def test_emotion_constraint_matches_brute_force(names, mining, alpha, beta):
    pol = polarity_of(names)
    for seed in range(4):
        emb, y = _batch(10 + seed, n=16, n_classes=len(names))
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


def test_related_classes_come_from_the_class_set():
    # section 3.4: related = same polarity, other class; neutral has none, nor has CREMA-D's only
    # positive class (happy)
    assert related_classes(polarity_of(RAVDESS)).tolist() == [False] + [True] * 7
    assert related_classes(polarity_of(CREMA)).tolist() == [True, True, True, False, False, True]


@pytest.mark.parametrize("mining", ["hard", "all"])
def test_crema_happy_anchors_get_the_triplet_loss(mining):
    """CREMA-D happy has no related class: eq. 13 (as neutral, end of section 3.4), not 0 as before."""
    pol = polarity_of(CREMA)
    # happy x3 (the only anchors with a positive), neutral, sad (no related sample): 1-D embeddings
    emb = torch.tensor([[0.0], [0.9], [1.0], [0.5], [1.5]], dtype=torch.float64)
    y = torch.tensor([3, 3, 3, 4, 5])
    got = emotion_constraint_loss(emb, y, pol, 0.3, 0.2, mining, reduction="sum")
    old = emotion_constraint_loss(emb, y, pol, 0.3, 0.2, mining, reduction="sum", no_related="none")
    assert old.item() == 0.0 and got.item() > 0
    # anchor 0: farthest positive d=1, closest negative (neutral) d=.25: 1 - .25 + .3 = 1.05
    # anchor 1: farthest positive .81, closest negative .16: .95; anchor 2: 1 - .25 + .3 = 1.05
    if mining == "hard":
        assert got.item() == pytest.approx(1.05 + 0.95 + 1.05)
    want = _brute_emotion(emb.tolist(), y.tolist(), pol.tolist(), 0.3, 0.2, mining)
    assert emotion_constraint_loss(emb, y, pol, 0.3, 0.2, mining).item() == pytest.approx(want)
    # the same anchors under plain eq. 13 (triplet_loss) give the same value
    assert got.item() == pytest.approx(triplet_loss(emb, y, 0.3, mining, reduction="sum").item())


def test_anchor_coverage_by_hand():
    # RAVDESS: happy x2, calm x2, sad x2, angry x2: everyone has p, related and opposite -> 1
    assert anchor_coverage([2, 2, 1, 1, 3, 3, 4, 4], RAVDESS) == 1.0
    assert anchor_coverage([2, 2, 1, 1, 3, 3], RAVDESS) == pytest.approx(4 / 6)  # sad: no related
    # happy x2, sad x2, angry x2: happy has no related class in the batch -> 4 / 6
    assert anchor_coverage([2, 2, 3, 3, 4, 4], RAVDESS) == pytest.approx(4 / 6)
    # neutral x2 (eq. 13: p and a negative), happy, calm (no positives) -> 2 / 4
    assert anchor_coverage([0, 0, 2, 1], polarity_of(RAVDESS)) == pytest.approx(0.5)
    # CREMA-D: happy x2 and neutral x2 use eq. 13; anger x2, fear x2 have related and opposite
    assert anchor_coverage([3, 3, 4, 4, 0, 0, 2, 2], CREMA) == 1.0
    assert anchor_coverage([3, 3, 4, 4, 0, 0], CREMA) == pytest.approx(4 / 6)  # anger: no related
    # a class set without a positive class: negative anchors need no opposite sample
    assert anchor_coverage([0, 0, 1, 1], ["sad", "angry"]) == 1.0


# realistic class sizes (section 4.1): RAVDESS 1440 clips, neutral half the others; CREMA-D 7442
SIZES = {"ravdess": (RAVDESS, [96] + [192] * 7), "crema": (CREMA, [1271, 1271, 1271, 1271, 1087, 1271])}


def _labels(counts: list[int], seed: int = 0) -> list[int]:
    out = [c for c, n in enumerate(counts) for _ in range(n)]
    g = torch.Generator().manual_seed(seed)
    return [out[i] for i in torch.randperm(len(out), generator=g)]


def _check_epoch(sampler, labels, names, full: bool, repeats: float = 0.1) -> list[float]:
    batches = list(sampler)
    assert len(batches) == len(sampler) and all(len(b) == sampler.batch_size for b in batches)
    used = Counter(i for b in batches for i in b)
    assert set(used) == set(range(len(labels)))  # every sample at least once per epoch
    assert sum(used.values()) <= (1 + repeats) * len(labels)  # and few repeats
    assert all(len(set(b)) == len(b) for b in batches)  # no sample twice in a batch
    cover = [anchor_coverage([labels[i] for i in b], names) for b in batches]
    if full:
        assert min(cover) == 1.0
    return cover


@pytest.mark.parametrize("dataset", ["ravdess", "crema"])
def test_sampler_gives_every_anchor_its_partners_at_batch_16(dataset):
    names, counts = SIZES[dataset]
    labels = _labels(counts)
    sampler = metric_batch_sampler(labels, names, 16, seed=5)
    assert sampler.guarantee and sampler.k == 2, sampler.summary
    emb, y = torch.zeros(len(labels), 2), torch.tensor(labels)
    n16 = related_classes(polarity_of(names))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        _check_epoch(sampler, labels, names, full=True)
    # every anchor has a valid term: with all embeddings equal each eq. 16 anchor costs alpha + beta,
    # each eq. 13 anchor alpha
    for b in list(sampler)[:20]:
        want = sum(0.2 + 0.3 if n16[labels[i]] else 0.2 for i in b)
        got = emotion_constraint_loss(emb[b], y[b], polarity_of(names), 0.2, 0.3, reduction="sum")
        assert got.item() == pytest.approx(want)


def test_sampler_is_seeded_and_epoch_dependent():
    labels = _labels([20, 20, 20, 20, 20, 20])
    a = metric_batch_sampler(labels, CREMA, 16, seed=1)
    assert list(a) == list(metric_batch_sampler(labels, CREMA, 16, seed=1)) == list(a)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(metric_batch_sampler(labels, CREMA, 16, seed=2)) != first


@pytest.mark.parametrize("bs", [1, 2, 5, 6, 8, 9])
def test_sampler_too_small_batches_still_work_and_say_so(bs):
    """RAVDESS needs 2 positive + 2 negative pairs and a place for neutral: batch >= 10."""
    names, counts = RAVDESS, [6] + [12] * 7
    labels = _labels(counts)
    sampler = metric_batch_sampler(labels, names, bs, seed=0)
    assert not sampler.guarantee and "NOT every anchor" in sampler.summary
    assert sampler.min_batch_size == 10
    cover = _check_epoch(sampler, labels, names, full=False, repeats=0.3)  # odd sizes: + 1 per batch
    assert min(cover) < 1.0
    if bs == 8:  # only the batches that make room for neutral lack a related class
        assert sum(c == 1.0 for c in cover) > len(cover) / 2
    assert metric_batch_sampler(labels, names, 10).guarantee


def test_sampler_with_odd_sizes_missing_classes_and_single_samples():
    labels = _labels([5, 7, 3, 9, 1, 11])  # CREMA-D, happy has 9, neutral a single clip
    s = metric_batch_sampler(labels, CREMA, 11, seed=3)
    assert not s.guarantee and "one sample" in s.summary  # neutral's only clip has no positive
    _check_epoch(s, labels, CREMA, full=False, repeats=1.0)  # 36 clips in batches of 11
    labels = _labels([8, 8, 8, 0, 8, 8])  # no happy clip: negatives never see the opposite polarity
    s = metric_batch_sampler(labels, CREMA, 16)
    assert not s.guarantee and "positive classes" in s.summary
    labels = _labels([8, 8, 8, 8, 8, 8])
    assert metric_batch_sampler(labels, CREMA, 15).guarantee  # odd: one more sample of a batch class
    _check_epoch(metric_batch_sampler(labels, CREMA, 15), labels, CREMA, full=True, repeats=0.5)


def test_sampler_refuses_bad_input():
    with pytest.raises(ValueError):
        metric_batch_sampler([], CREMA, 16)
    with pytest.raises(ValueError):
        metric_batch_sampler([0, 6], CREMA, 16)
    with pytest.raises(ValueError):
        metric_batch_sampler([0, 1], CREMA, 0)
    with pytest.raises(ValueError, match="bored"):
        metric_batch_sampler([0, 1], ["happy", "bored"], 4)
