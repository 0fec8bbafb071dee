"""Speaker-independent fold tables from speaker groups (split codes from ``aver.layout``).

In fold k the test speakers are group k, the validation speakers group (k + 1) mod n, and the
training speakers all the others, so train, validation and test speakers are always disjoint.
"""

from __future__ import annotations

import numpy as np

from aver.errors import ConfigError
from aver.layout import TEST, TRAIN, UNUSED, VALIDATION
from aver.registry import Registry

# Named fold protocols (described in aver.train.protocols).
PROTOCOLS: Registry[str] = Registry("fold protocol")
PROTOCOLS.add("cache", "the folds stored in the cache (attrs.aver.folds_source)")
PROTOCOLS.add("mocanu2023-10fold", "Mocanu 2023: 10 speaker-independent folds, 80/10/10 by speakers")
PROTOCOLS.add(
    "avtca-random",
    "AVT-CA: per-class random 80/20 train/test (validation: 10% of train), 5 seeds; SPEAKER-LEAKY",
)
LEAKY = frozenset({"avtca-random"})  # protocols whose test speakers also appear in training


def round_robin_groups(speakers: list[str], n_folds: int) -> list[list[str]]:
    """Sorted unique speakers dealt into ``n_folds`` groups: speaker i goes to group i mod n."""
    unique = sorted(set(speakers))
    if len(unique) < 3:
        raise ConfigError(f"speaker-independent folds need at least 3 speakers; found {len(unique)}")
    n = min(n_folds, len(unique))
    return [unique[i::n] for i in range(n)]


def speaker_folds(speakers: list[str], groups: list[list[str]]) -> np.ndarray:
    """Fold table ``int8 [n_folds, N]`` from speaker groups (test = k, validation = k + 1)."""
    n = len(groups)
    where = {s: g for g, members in enumerate(groups) for s in members}
    missing = sorted({s for s in speakers if s not in where})
    if missing:
        raise ConfigError(f"speakers {missing[:5]} belong to no fold group")
    group_of = np.array([where[s] for s in speakers], dtype=np.int64)
    table = np.full((n, len(speakers)), TRAIN, dtype=np.int8)
    for k in range(n):
        table[k, group_of == k] = TEST
        table[k, group_of == (k + 1) % n] = VALIDATION
    return table


def protocol_folds(speakers: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    """Fold table ``int8 [K, N]`` of the named protocol ``name`` (``aver.train.protocols``; not
    ``cache``) for these clips: chosen at extraction (``aver extract --protocol``) or training."""
    if name == "mocanu2023-10fold":
        return speaker_folds([str(s) for s in speakers], round_robin_groups([str(s) for s in speakers], 10))
    if name == "avtca-random":
        return np.stack([random_split(labels, seed=k) for k in range(5)])
    raise ConfigError(f"protocol {name!r} has no fold table of its own")


def random_split(labels: np.ndarray, seed: int, test: float = 0.2, validation: float = 0.1) -> np.ndarray:
    """Split codes ``int8 [N]``: per class, ``test`` of the clips to test, ``validation`` of the rest
    to validation, the others to train (seeded). Unlabelled clips are unused."""
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), UNUSED, dtype=np.int8)
    for c in np.unique(labels[labels >= 0]):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test * len(members)))
        n_val = int(round(validation * (len(members) - n_test)))
        out[members[:n_test]] = TEST
        out[members[n_test : n_test + n_val]] = VALIDATION
        out[members[n_test + n_val :]] = TRAIN
    return out
