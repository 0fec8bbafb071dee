"""Named fold protocols, computed from a cache's speakers and labels (no raw data needed).

``cache`` uses the folds stored at extraction (each adapter's speaker-independent folds, or the
user's fold files). The others reproduce the protocols of the two other papers, so all three
systems can be compared on the same folds, and on each other's:

- ``mocanu2023-10fold``: Mocanu et al. 2023, 10-fold speaker-independent cross-validation, 80 / 10 /
  10 (speakers dealt round-robin into 10 groups; fold k tests group k, validates on group k + 1).
- ``avtca-random``: AVT-CA's class-balanced random 80 / 20 split with no speaker independence:
  **speaker-leaky** (the same actor appears in training and test), so its numbers are not comparable
  with speaker-independent ones. The paper has no validation set; ours takes 10 % of each class's
  training part, so that epochs and heads are still chosen without the test clips. Fold k is the
  split drawn with seed k (5 folds).
"""

from __future__ import annotations

import numpy as np

from aver.errors import ConfigError
from aver.folds import round_robin_groups, speaker_folds
from aver.layout import TEST, TRAIN, UNUSED, VALIDATION
from aver.registry import Registry

PROTOCOLS: Registry[str] = Registry("fold protocol")
PROTOCOLS.add("cache", "the folds stored in the cache (attrs.aver.folds_source)")
PROTOCOLS.add("mocanu2023-10fold", "Mocanu 2023: 10 speaker-independent folds, 80/10/10 by speakers")
PROTOCOLS.add(
    "avtca-random",
    "AVT-CA: per-class random 80/20 train/test (validation: 10% of train), 5 seeds; SPEAKER-LEAKY",
)
LEAKY = frozenset({"avtca-random"})  # protocols whose test speakers also appear in training


def describe(name: str) -> str:
    """One line for logs, metrics and reports; leaky protocols say so."""
    return f"{name}: {PROTOCOLS.get(name)}" + (" (speaker-leaky: not comparable)" if name in LEAKY else "")


def protocol_folds(speakers: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    """Fold table ``int8 [K, N]`` of protocol ``name`` (not ``cache``) for these clips."""
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
