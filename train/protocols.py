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

# the names and fold tables live in the kernel, so that extraction can store them too
from aver.folds import LEAKY, PROTOCOLS, protocol_folds, random_split  # noqa: F401


def describe(name: str) -> str:
    """One line for logs, metrics and reports; leaky protocols say so."""
    return f"{name}: {PROTOCOLS.get(name)}" + (" (speaker-leaky: not comparable)" if name in LEAKY else "")
