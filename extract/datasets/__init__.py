"""Dataset adapters (a registry: the key is the CLI name and the name recorded in the cache).

The public API for writing an adapter, here or in a plugin package (entry-point group
``aver.datasets``; walk-through in docs/adding-a-dataset.md): ``register_dataset``, the records
``ClipRecord`` / ``DatasetOptions`` / ``DatasetIndex``, and the helpers ``require_dir``,
``check_options``, ``option_flag``, ``read_csv`` and ``finish_index`` (the one fold policy).
Plugins are loaded on the registry's first lookup (``aver.plugins``), not at import.
"""

from . import cremad, folder, mspimprov, ravdess  # noqa: F401  (register the adapters)
from .base import (
    DATASETS,
    PLUGIN_GROUP,
    ClipRecord,
    DatasetIndex,
    DatasetOptions,
    check_options,
    finish_index,
    option_flag,
    read_csv,
    register_dataset,
    require_dir,
)

__all__ = [
    "DATASETS",
    "PLUGIN_GROUP",
    "ClipRecord",
    "DatasetIndex",
    "DatasetOptions",
    "check_options",
    "finish_index",
    "load_dataset",
    "option_flag",
    "read_csv",
    "register_dataset",
    "require_dir",
]


def load_dataset(name: str, opts: DatasetOptions) -> DatasetIndex:
    """Index the corpus ``name`` (see ``DATASETS.names()``; plugins included).

    The index must carry ``name`` (the cache records it): an adapter, a plugin's above all, that
    returns anything else is refused here, before any work.
    """
    index = DATASETS.get(name)(opts)
    if not isinstance(index, DatasetIndex) or index.name != name:
        got = f"an index named {index.name!r}" if isinstance(index, DatasetIndex) else type(index).__name__
        raise TypeError(
            f"the adapter of dataset {name!r} returned {got}; it must return "
            f"finish_index({name!r}, ...) (a DatasetIndex named as registered)"
        )
    return index
