"""Dataset adapters (a registry: the key is the CLI name and the name recorded in the cache)."""

from . import cremad, folder, mspimprov, ravdess  # noqa: F401  (register the adapters)
from .base import DATASETS, ClipRecord, DatasetIndex, DatasetOptions

__all__ = ["DATASETS", "ClipRecord", "DatasetIndex", "DatasetOptions", "load_dataset"]


def load_dataset(name: str, opts: DatasetOptions) -> DatasetIndex:
    """Index the corpus ``name`` (see ``DATASETS.names()``)."""
    return DATASETS.get(name)(opts)
