"""aver stage two (``aver.train``): train and evaluate models on a feature cache.

Needs only the base install (torch, zarr, numpy, safetensors, matplotlib). Reads caches only
through ``aver.cache.FeatureCache`` and never imports ``aver.extract``: a teammate with only a
cache needs none of the extraction stack.

Start reading at ``recipe.py`` (setup -> fit -> report). Library entry points:
``aver.train.train_fold``, ``aver.train.cross_validate``, ``aver.train.evaluate_run``,
``aver.train.sweep``.
"""

from typing import Any

__all__ = ["cross_validate", "evaluate_run", "sweep", "train_fold"]


def __getattr__(name: str) -> Any:
    if name == "sweep":
        from .sweeper import sweep

        return sweep
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
