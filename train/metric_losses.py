"""Triplet and emotion-constraint metric losses of Mocanu, Tapu, Zaharia 2023 (section 3.4), and the
batch sampler that gives every anchor the partners they need.

Eq. 13 is the hinge triplet loss on squared Euclidean distances. Eq. 16 (the "emotion metric") adds
Mikel's-wheel polarity: for an anchor a of an emotional class, p is a sample of a's class, r1 / r2 are
"related" samples (same polarity, different class) and n is a sample of the opposite polarity:

    [d(a,p) - d(a,r1) + alpha]_+  +  [d(a,r2) - d(a,n) + beta]_+

A class with no related class in the dataset's class set (neutral everywhere; on CREMA-D also happy,
its only positive class) uses eq. 13 (margin alpha) against every other class: section 3.4 says so
for neutral ("no related emotion can be identified ... the traditional triplet loss is used"), and
the reason holds for every such class. Which classes these are is decided from the class set
(``related_classes``), never from the batch. ``no_related="none"`` is the literal reading for the
non-neutral ones (eq. 16 only, whose terms are then always empty: no metric loss for them).

The paper does not say how triplets are drawn from a mini-batch; ``mining`` chooses:

- "hard" (batch-hard, Hermans et al. 2017): per anchor and term, the hardest choice: the farthest p,
  the closest r1, the farthest r2, the closest n (for eq. 13 the farthest p and the closest negative).
  r1 and r2 come from one related set but are chosen independently: each is the hardest for its term.
- "all": the mean over every valid (a, x, y) triplet whose hinge is positive (batch-all).

Eq. 13 / 16 are sums over anchors; ``reduction="mean"`` (default) divides by the anchors (hard) or the
positive triplets (all) so the loss does not scale with batch size; ``reduction="sum"`` is the paper's.
An anchor without the partners a term needs contributes nothing to that term; with no valid term at
all the loss is 0 (still attached to the graph). ``metric_batch_sampler`` builds batches in which no
anchor lacks them (``anchor_coverage`` measures it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "EmotionBatchSampler",
    "anchor_coverage",
    "emotion_constraint_loss",
    "metric_batch_sampler",
    "polarity_of",
    "related_classes",
    "triplet_loss",
]

NO_RELATED = ("triplet", "none")

# Mocanu 2023, section 3.4: "three classes of emotions with positive polarity (i.e., happy, calm and
# surprise) and four emotions categories with negative polarity (i.e., sad, fear, anger and disgust)";
# neutral sits at the centre of the wheel. Names as RAVDESS, CREMA-D (codes) and common spellings.
_POLARITY: dict[str, int] = {
    **dict.fromkeys(("happy", "happiness", "hap", "calm", "surprised", "surprise", "sur"), 1),
    **dict.fromkeys(("sad", "sadness", "fearful", "fear", "fea", "angry", "anger", "ang"), -1),
    **dict.fromkeys(("disgust", "disgusted", "dis"), -1),
    **dict.fromkeys(("neutral", "neu"), 0),
}


def polarity_of(class_names: list[str]) -> torch.Tensor:
    """[C] int64 polarity per class: +1 positive, -1 negative, 0 neutral (case-insensitive names)."""
    out = []
    for name in class_names:
        key = str(name).strip().lower()
        if key not in _POLARITY:
            raise ValueError(f"no valence polarity known for class {name!r}; known: {sorted(_POLARITY)}")
        out.append(_POLARITY[key])
    return torch.tensor(out, dtype=torch.long)


def related_classes(polarity: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """[C] bool: the class has a related class in the class set (section 3.4: another class of the same,
    non-zero polarity), so its anchors use eq. 16; the others use eq. 13."""
    pol = torch.as_tensor(polarity).long()
    return (pol != 0) & ((pol[:, None] == pol[None, :]).sum(dim=1) > 1)


def _sq_dists(emb: torch.Tensor) -> torch.Tensor:
    """[B, B] squared Euclidean distances (expanded form: no [B, B, E] intermediate)."""
    emb = emb.float()
    sq = emb.square().sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T).clamp(min=0.0)


def _hard(d: torch.Tensor, far: torch.Tensor, near: torch.Tensor, margin: float):
    """Per anchor [max_{far} d - min_{near} d + margin]_+ and whether both sets are non-empty."""
    valid = far.any(dim=1) & near.any(dim=1)
    hardest_far = d.masked_fill(~far, float("-inf")).amax(dim=1)
    hardest_near = d.masked_fill(~near, float("inf")).amin(dim=1)
    gap = torch.where(valid, hardest_far - hardest_near, torch.zeros_like(hardest_far))
    return torch.where(valid, torch.relu(gap + margin), torch.zeros_like(gap)), valid


def _all(d: torch.Tensor, far: torch.Tensor, near: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge values of every valid (a, x in far[a], y in near[a]) triplet that are positive."""
    hinge = d[:, :, None] - d[:, None, :] + margin  # [a, x, y]
    valid = far[:, :, None] & near[:, None, :]
    vals = hinge[valid]
    return vals[vals > 0]


def _reduce(total: torch.Tensor, count: int, emb: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if count == 0:
        return emb.sum() * 0.0  # keeps the graph (and the device) of the embeddings
    return total / count if reduction == "mean" else total


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive: same class, not itself; negative: other class), both [B, B]."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _check_mining(mining: str) -> None:
    if mining not in ("hard", "all"):
        raise ValueError(f"mining must be 'hard' or 'all', got {mining!r}")


def triplet_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    mining: str = "hard",
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Paper eq. 13 on emb [B, E], labels [B]: pull same-class samples in, push others past ``margin``."""
    _check_mining(mining)
    labels = labels.to(emb.device)
    d = _sq_dists(emb)
    pos, neg = _masks(labels)
    if mining == "hard":
        per_anchor, valid = _hard(d, pos, neg, margin)
        return _reduce(per_anchor.sum(), int(valid.sum()), emb, reduction)
    vals = _all(d, pos, neg, margin)
    return _reduce(vals.sum(), vals.numel(), emb, reduction)


def _emotion_masks(
    labels: torch.Tensor, polarity: torch.Tensor, no_related: str = "triplet"
) -> dict[str, torch.Tensor]:
    """[B, B] partner masks of eq. 13 / 16 (rows are anchors); ``polarity`` is the class set's."""
    if no_related not in NO_RELATED:
        raise ValueError(f"no_related must be one of {NO_RELATED}, got {no_related!r}")
    pos, neg = _masks(labels)
    pol_c = polarity.to(labels.device).long()
    pol = pol_c[labels]
    # eq. 16 anchors: a related class exists in the class set; "none": every emotional class (old reading)
    eq16 = related_classes(pol_c)[labels] if no_related == "triplet" else pol != 0
    eq13 = ~related_classes(pol_c)[labels] if no_related == "triplet" else pol == 0
    return {
        "pos": pos,
        "related": eq16[:, None] & (pol[:, None] == pol[None, :]) & neg,  # eq. 14: r1, r2
        "opposite": eq16[:, None] & (pol[:, None] == -pol[None, :]),  # eq. 15: n
        "eq13_neg": eq13[:, None] & neg,  # eq. 13 against every other class
    }


def emotion_constraint_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    polarity: torch.Tensor,
    alpha: float = 0.2,
    beta: float = 0.2,
    mining: str = "hard",
    *,
    no_related: str = "triplet",
    reduction: str = "mean",
) -> torch.Tensor:
    """Paper eq. 16 on emb [B, E], labels [B], polarity [C] (+1 / -1 / 0 per class of the class set);
    eq. 13 for the classes without a related class (see the module doc)."""
    _check_mining(mining)
    labels = labels.to(emb.device)
    if labels.numel() and polarity.numel() <= int(labels.max()):
        raise ValueError(f"polarity has {polarity.numel()} classes, labels go up to {int(labels.max())}")
    d = _sq_dists(emb)
    m = _emotion_masks(labels, polarity, no_related)
    terms = [
        (m["pos"], m["related"], alpha),  # eq. 16, first sum (eq. 14)
        (m["related"], m["opposite"], beta),  # eq. 16, second sum (eq. 15)
        (m["pos"], m["eq13_neg"], alpha),  # eq. 13
    ]
    if mining == "hard":
        total = torch.zeros_like(d[:, 0])
        counted = torch.zeros_like(labels, dtype=torch.bool)
        for far, near, margin in terms:
            per_anchor, valid = _hard(d, far, near, margin)
            total, counted = total + per_anchor, counted | valid
        return _reduce(total.sum(), int(counted.sum()), emb, reduction)
    vals = torch.cat([_all(d, far, near, margin) for far, near, margin in terms])
    return _reduce(vals.sum(), vals.numel(), emb, reduction)


def _as_polarity(polarity_or_class_names) -> torch.Tensor:
    items = list(polarity_or_class_names)
    if items and isinstance(items[0], str):
        return polarity_of(items)
    return torch.as_tensor(items, dtype=torch.long)


def anchor_coverage(batch_labels, polarity_or_class_names) -> float:
    """Share of a batch's anchors whose metric-loss terms all have partners in the batch.

    An eq. 16 anchor needs a positive, a related sample and, where the class set has the opposite
    polarity, an opposite one (both sums non-empty); an eq. 13 anchor (no related class in the class
    set) a positive and, where the class set has another class, a sample of one. 1.0 for an empty batch.
    """
    pol = _as_polarity(polarity_or_class_names)
    y = torch.as_tensor(batch_labels, dtype=torch.long).reshape(-1)
    if y.numel() == 0:
        return 1.0
    m = _emotion_masks(y, pol)
    eq16 = related_classes(pol)[y]
    opposite_exists = (pol[None, :] == -pol[y][:, None]).any(dim=1)
    ok16 = m["pos"].any(1) & m["related"].any(1) & (m["opposite"].any(1) | ~opposite_exists)
    ok13 = m["pos"].any(1) & (m["eq13_neg"].any(1) | (len(pol) < 2))
    return float(torch.where(eq16, ok16, ok13).float().mean())


Chunk = tuple[int, list[int]]  # (class, sample indices)


class EmotionBatchSampler:
    """Batches of same-class pairs in which every anchor has the partners eq. 13 / 16 need.

    k = 2 (pairs; one sample when ``batch_size`` is 1): the smallest group that gives every anchor a
    positive, so a batch holds as many classes as it can. A batch of ``m = batch_size // 2`` pairs
    has fixed places, drawn from the classes with the most pairs left:

    - each polarity with two or more classes in the data: pairs of two distinct classes of it, so
      every anchor of it has a related class (eq. 14) and the other polarity has an opposite (eq. 15);
    - a polarity with a single class (CREMA-D happy): one pair of it (its anchors use eq. 13);
    - one neutral pair, only where the above make fewer than two classes (eq. 13 needs a negative).

    The other places take the remaining pairs of every class (neutral included), spread evenly over
    the epoch; places left over take random pairs. RAVDESS at batch 16: 2 positive + 2 negative classes
    fixed, 4 places free; CREMA-D: happy + 2 negative classes, 5 free. Every sample is in a batch each
    epoch; repeats: the top-up of a class with an odd count, the fillers of the places left over,
    fixed places a polarity has too few pairs for, and the odd sample of an odd ``batch_size``.

    ``guarantee`` (bool) says whether every anchor of every batch has its partners wherever the class
    set ``polarity`` has them; it needs ``batch_size >= min_batch_size``, both polarities' classes in
    the data and two samples per class. Where a batch is too small for the fixed places and the rest,
    some batches ("reduced", as few as can be) give one fixed place of a polarity to the rest, and
    ``summary`` says so. Deterministic in (seed, epoch): call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        polarity: Sequence[int] | torch.Tensor,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        self.labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
        self.polarity = np.asarray(torch.as_tensor(polarity).cpu(), dtype=np.int64).reshape(-1)
        if self.labels.size == 0 or int(batch_size) < 1:
            raise ValueError(f"need at least one sample and batch_size >= 1, got {batch_size}")
        if self.labels.max() >= len(self.polarity) or self.labels.min() < 0:
            raise ValueError(
                f"polarity has {len(self.polarity)} classes, labels go up to {self.labels.max()}"
            )
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0
        self.k = min(2, self.batch_size)
        self.m = self.batch_size // self.k  # pairs per batch
        self.members = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        self.groups = {s: [c for c in self.members if self.polarity[c] == s] for s in (1, -1, 0)}
        self.chunks = {s: sum(-(-len(self.members[c]) // self.k) for c in g) for s, g in self.groups.items()}
        self.need = self._fixed_places()
        self.n_batches, self.n_reduced, self.reduce_group = self._plan()
        self.guarantee, self.min_batch_size, self.summary = self._describe()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def _fixed_places(self) -> dict[int, int]:
        """Fixed pairs per batch and polarity (see the class doc), cut to what ``m`` holds."""
        need = {s: min(2, len(self.groups[s])) for s in (1, -1)}
        need[0] = int(sum(need.values()) == 1 and bool(self.groups[0]))
        while sum(need.values()) > self.m:  # a related class goes before an opposite polarity
            need[self._reducible(need)] -= 1
        return need

    def _reducible(self, need: dict[int, int]) -> int | None:
        """The polarity a reduced batch gives a fixed place of: one with two (fewest pairs), else one."""
        for n in (2, 1):
            cands = [s for s in need if need[s] == n]
            if cands:
                return min(cands, key=lambda s: (self.chunks[s], -s))
        return None

    def _plan(self) -> tuple[int, int, int | None]:
        """(batches, reduced batches, reduced polarity): the fewest batches that place every pair.

        A class fills at most one fixed place per batch, so with nb batches polarity s fills
        min(places, sum over its classes of min(pairs, nb)) of its places (taking the classes with the
        most pairs left first reaches it); its other pairs need free places.
        """
        need, c = self.need, self.chunks
        free, r = self.m - sum(need.values()), self._reducible(self.need)
        nb = max(1, -(-sum(c.values()) // self.m))
        while True:
            cap = {s: sum(min(-(-len(self.members[x]) // self.k), nb) for x in self.groups[s]) for s in need}
            fixed = {s: nb * need[s] for s in need}
            deficit = sum(c[s] - min(fixed[s], cap[s]) for s in need) - nb * free  # pairs without a place
            if deficit <= 0:
                return nb, 0, r
            # no free place: a reduced batch frees one, which helps while r's fixed places need refills
            if free == 0 and deficit <= min(nb, fixed[r] - cap[r]):
                return nb, deficit, r
            nb += 1

    def _describe(self) -> tuple[bool, int, str]:
        class_set = {s: int((self.polarity == s).sum()) for s in (1, -1)}
        full = {s: min(2, n) for s, n in class_set.items()}
        extra = int(bool(self.groups[0]) and sum(full.values()) >= 2)
        min_bs = 2 * (sum(full.values()) + max(extra, int(sum(full.values()) < 2)))
        names = {1: "positive", -1: "negative", 0: "neutral"}
        fixed = " + ".join(f"{n} {names[s]}" for s, n in self.need.items() if n) or "no"
        free = self.m - sum(self.need.values())
        text = (
            f"k={self.k}; {self.n_batches} batches of {self.batch_size} ({self.m} pairs: {fixed} classes "
            f"fixed, {free} free)"
        )
        problems = [
            f"{names[s]} classes: {full[s]} per batch needed" for s in (1, -1) if self.need[s] < full[s]
        ]
        if self.n_reduced:
            problems.append(
                f"{self.n_reduced} batches hold one {names[self.reduce_group]} class fewer (batch_size >= "
                f"{min_bs} needed)"
            )
        if self.k < 2 or any(len(ix) < 2 for ix in self.members.values()):
            problems.append("a class with one sample (or batch_size 1) has no positive")
        if len(self.members) > 1 and sum(self.need.values()) < 2:
            problems.append("fewer than two classes fixed per batch")
        if not problems:
            return True, min_bs, text + "; every anchor has its eq. 13/16 partners"
        return False, min_bs, text + "; NOT every anchor has its partners: " + "; ".join(problems)

    def _pairs(self, rng: np.random.Generator) -> dict[int, list[list[int]]]:
        """Each class's samples shuffled and cut into groups of k; an odd one topped up (a repeat)."""
        out = {}
        for c, ix in self.members.items():
            perm = rng.permutation(ix).tolist()
            chunks = [perm[i : i + self.k] for i in range(0, len(perm), self.k)]
            if len(chunks[-1]) < self.k <= len(perm):
                chunks[-1].append(int(rng.choice(perm[: len(perm) - len(chunks[-1])])))
            out[c] = chunks
        return out

    def _refill(self, c: int, rng: np.random.Generator) -> list[int]:
        ix = self.members[c]
        return rng.choice(ix, size=min(self.k, len(ix)), replace=False).tolist()

    def _fixed(self, batch: list[Chunk], pairs, reduced: bool, rng: np.random.Generator) -> list[Chunk]:
        """One batch's fixed places: distinct classes, those with the most pairs left first."""
        for s, n in self.need.items():
            n -= int(reduced and s == self.reduce_group)
            for c in sorted(self.groups[s], key=lambda c: (-len(pairs[c]), rng.random()))[:n]:
                batch.append((c, pairs[c].pop() if pairs[c] else self._refill(c, rng)))
        return batch

    @staticmethod
    def _spread(items: list[Chunk], rng: np.random.Generator) -> list[Chunk]:
        """Order chunks so each class is spread evenly along the list (consecutive ones mix classes)."""
        by_class: dict[int, list[list[int]]] = {}
        for c, ch in items:
            by_class.setdefault(c, []).append(ch)
        keyed = []
        for c, chs in by_class.items():
            off = rng.random()
            keyed += [((i + off) / len(chs), rng.random(), c, ch) for i, ch in enumerate(chs)]
        keyed.sort(key=lambda t: (t[0], t[1]))
        return [(c, ch) for _, _, c, ch in keyed]

    def _deal(self, batches: list[list[Chunk]], pairs, rng: np.random.Generator) -> None:
        """The remaining pairs into the free places, evenly over the epoch; random pairs fill the rest."""
        pool = self._spread([(c, p) for c, ps in pairs.items() for p in ps], rng)
        slots = [i for i, b in enumerate(batches) for _ in range(self.m - len(b))]
        while len(pool) > len(slots):  # not expected (the plan counts places); stay correct anyway
            batches.append(self._fixed([], {c: [] for c in self.members}, False, rng))
            slots += [len(batches) - 1] * (self.m - len(batches[-1]))
        chosen = {j * len(slots) // len(pool): chunk for j, chunk in enumerate(pool)} if pool else {}
        classes = sorted(self.members)
        for j, i in enumerate(slots):
            c = classes[rng.integers(len(classes))]
            batches[i].append(chosen[j] if j in chosen else (c, self._refill(c, rng)))

    def _finish(self, chunks: list[Chunk], rng: np.random.Generator) -> list[int]:
        """Sample indices of one batch: a sample drawn twice (a refill) swapped for an unused one of its
        class, and an odd place filled with another sample of a class in the batch."""
        out: list[int] = []
        for c, ch in chunks:
            for i in ch:
                if i in out:
                    unused = np.setdiff1d(self.members[c], out)
                    i = int(rng.choice(unused)) if unused.size else i
                out.append(int(i))
        while len(out) < self.batch_size:
            unused = np.setdiff1d(np.concatenate([self.members[c] for c, _ in chunks]), out)
            if not unused.size:  # every sample of the batch's classes is in it: any other one
                unused = np.setdiff1d(np.arange(len(self.labels)), out)
            out.append(int(rng.choice(unused if unused.size else out)))
        return rng.permutation(out).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pairs = self._pairs(rng)
        reduced = np.zeros(self.n_batches, dtype=bool)
        reduced[rng.choice(self.n_batches, self.n_reduced, replace=False)] = True
        batches = [self._fixed([], pairs, bool(r), rng) for r in reduced]
        self._deal(batches, pairs, rng)
        for i in rng.permutation(len(batches)):
            yield self._finish(batches[i], rng)


def metric_batch_sampler(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    batch_size: int,
    seed: int = 0,
) -> EmotionBatchSampler:
    """The batch sampler for a model trained with eq. 13 / 16 (``EmotionBatchSampler``: k = 2, fixed
    places per polarity of the class set ``class_names``); log its ``summary``, check ``guarantee``."""
    return EmotionBatchSampler(labels, polarity_of(list(class_names)), batch_size, seed)
