"""``aver.qa``: the quality report of a cache, re-exported from ``aver.apps.qa`` (where it lives:
it uses stage one's decoding, cropping and flow, which the kernel never imports). Kept so that
``from aver.qa import write_report`` and the names below go on working."""

from __future__ import annotations

from aver.apps.qa import *  # noqa: F403
from aver.apps.qa import __all__  # noqa: F401
from aver.apps.qa.page import _rule  # noqa: F401  (tests build one section on its own)
