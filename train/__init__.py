"""aver stage two: train and evaluate models on a feature cache.

Reads caches only through what ``cache_layout.md`` specifies and never imports ``extract``.
"""
