"""Triplet and emotion-constraint metric losses of Mocanu, Tapu, Zaharia 2023 (section 3.4).

Eq. 13 is the hinge triplet loss on squared Euclidean distances. Eq. 16 (the "emotion metric") adds
Mikel's-wheel polarity: for an anchor a of an emotional class, p is a sample of a's class, r1 / r2 are
"related" samples (same polarity, different class) and n is a sample of the opposite polarity:

    [d(a,p) - d(a,r1) + alpha]_+  +  [d(a,r2) - d(a,n) + beta]_+

Neutral anchors have no related class and use eq. 13 (with margin alpha) instead. The paper does not
say how triplets are drawn from a mini-batch; ``mining`` chooses:

- "hard" (batch-hard, Hermans et al. 2017): per anchor and term, the hardest choice: the farthest p,
  the closest r1, the farthest r2, the closest n (for eq. 13 the farthest p and the closest negative).
  r1 and r2 come from one related set but are chosen independently: each is the hardest for its term.
- "all": the mean over every valid (a, x, y) triplet whose hinge is positive (batch-all).

Eq. 13 / 16 are sums over anchors; ``reduction="mean"`` (default) divides by the anchors (hard) or the
positive triplets (all) so the loss does not scale with batch size; ``reduction="sum"`` is the paper's.
An anchor without the partners a term needs contributes nothing to that term; with no valid term at
all the loss is 0 (still attached to the graph).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["PolarityBatchSampler", "emotion_constraint_loss", "polarity_of", "triplet_loss"]

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


def _emotion_masks(labels: torch.Tensor, polarity: torch.Tensor) -> dict[str, torch.Tensor]:
    """[B, B] partner masks of eq. 16 (rows are anchors)."""
    pos, neg = _masks(labels)
    pol = polarity.to(labels.device).long()[labels]
    emotional = (pol != 0)[:, None]
    return {
        "pos": pos,
        "related": emotional & (pol[:, None] == pol[None, :]) & neg,
        "opposite": emotional & (pol[:, None] == -pol[None, :]),
        "neutral_neg": ~emotional & neg,  # neutral anchors: eq. 13 against every other class
    }


def emotion_constraint_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    polarity: torch.Tensor,
    alpha: float = 0.2,
    beta: float = 0.2,
    mining: str = "hard",
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Paper eq. 16 on emb [B, E], labels [B], polarity [C] (+1 / -1 / 0 per class); see module doc."""
    _check_mining(mining)
    labels = labels.to(emb.device)
    if labels.numel() and polarity.numel() <= int(labels.max()):
        raise ValueError(f"polarity has {polarity.numel()} classes, labels go up to {int(labels.max())}")
    d = _sq_dists(emb)
    m = _emotion_masks(labels, polarity)
    terms = [
        (m["pos"], m["related"], alpha),
        (m["related"], m["opposite"], beta),
        (m["pos"], m["neutral_neg"], alpha),
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


class PolarityBatchSampler:
    """P x K batches for the metric losses: classes of both polarities, ``k`` samples per class.

    Each epoch every class's samples are shuffled and cut into chunks of ``k`` (a short last chunk is
    topped up from the same class; a class smaller than ``k`` gives one smaller chunk). A batch holds
    ``batch_size // k`` chunks. Every batch first gets one chunk of a positive and one of a negative
    class (when the data has both; a polarity with fewer chunks than batches has random chunks of its
    classes drawn again); the other chunks fill the remaining places in an order that spreads each
    class evenly, so a batch mostly holds distinct classes. Every chunk is used exactly once per epoch
    (except the leftovers with ``drop_last``); a few samples repeat (top-ups, polarity and last-batch
    fillers). Deterministic in (seed, epoch): call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        polarity: Sequence[int] | torch.Tensor,
        batch_size: int,
        k: int = 4,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if k < 2 or batch_size % k or batch_size < 2 * k:
            raise ValueError(
                f"need k >= 2 and batch_size a multiple of k, at least 2k; got {batch_size}, {k}"
            )
        self.labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        self.polarity = np.asarray(torch.as_tensor(polarity).cpu(), dtype=np.int64)
        if self.labels.size == 0:
            raise ValueError("PolarityBatchSampler needs at least one sample")
        if self.labels.max() >= len(self.polarity) or self.labels.min() < 0:
            raise ValueError(
                f"polarity has {len(self.polarity)} classes, labels go up to {self.labels.max()}"
            )
        self.batch_size, self.k, self.seed, self.drop_last = batch_size, k, seed, drop_last
        self.members = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        self.epoch = 0
        if batch_size // k <= len(self._group_chunks()):
            raise ValueError(
                f"batch_size // k = {batch_size // k} chunks per batch leaves no place beside one chunk of "
                f"each of {len(self._group_chunks())} polarities: use a larger batch_size or a smaller k"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _group_chunks(self) -> list[int]:
        """Chunks per polarity present in the data (positive, negative)."""
        counts = [
            sum(math.ceil(len(ix) / self.k) for c, ix in self.members.items() if self.polarity[c] == s)
            for s in (1, -1)
        ]
        return [n for n in counts if n]

    def __len__(self) -> int:
        m = self.batch_size // self.k
        n = sum(math.ceil(len(ix) / self.k) for ix in self.members.values())
        if self.drop_last:
            return n // m
        groups = self._group_chunks()
        free = m - len(groups)  # places per batch left after one chunk of each polarity
        nb = max(1, math.ceil(n / m))
        # the chunks that do not fill a polarity place must fit in the free places
        while nb * free < n - sum(min(nb, g) for g in groups):
            nb += 1
        return nb

    def _chunk(self, c: int, rng: np.random.Generator) -> list[int]:
        """A fresh random chunk of class c (a refill: these samples repeat)."""
        ix = self.members[c]
        return rng.choice(ix, size=min(self.k, len(ix)), replace=False).tolist()

    def _chunks(self, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        out = []
        for c, ix in self.members.items():
            perm = rng.permutation(ix)
            chunks = [perm[i : i + self.k].tolist() for i in range(0, len(perm), self.k)]
            if len(chunks[-1]) < self.k and len(perm) >= self.k:  # top up from the same class
                rest = np.setdiff1d(perm, chunks[-1])
                chunks[-1] += rng.choice(rest, size=self.k - len(chunks[-1]), replace=False).tolist()
            out += [(c, ch) for ch in chunks]
        return out

    @staticmethod
    def _spread(items: list[tuple[int, list[int]]], rng: np.random.Generator) -> list[tuple[int, list[int]]]:
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

    def _schedule(self, rng: np.random.Generator) -> list[list[list[int]]]:
        """The epoch's batches, each a list of chunks."""
        nb, m = len(self), self.batch_size // self.k
        batches: list[list[list[int]]] = [[] for _ in range(nb)]
        chunks, rest = self._chunks(rng), []
        for sign in (1, -1):
            group = self._spread([(c, ch) for c, ch in chunks if self.polarity[c] == sign], rng)
            if not group:
                continue
            classes = sorted({c for c, _ in group})
            for i in range(nb):
                c = classes[rng.integers(len(classes))]
                batches[i].append(group[i][1] if i < len(group) else self._chunk(c, rng))
            rest += group[nb:]
        rest = self._spread(rest + [(c, ch) for c, ch in chunks if self.polarity[c] == 0], rng)
        classes = sorted(self.members)
        for batch in batches:
            while len(batch) < m:
                batch.append(
                    rest.pop(0)[1] if rest else self._chunk(classes[rng.integers(len(classes))], rng)
                )
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for chunks in self._schedule(rng):
            yield rng.permutation([i for ch in chunks for i in ch]).tolist()
