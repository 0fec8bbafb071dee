"""The three prediction heads of DE-III (paper section 3.4: L = L_V + L_A + L_F), defined once.

Registry key = the ``--head`` choice = the name in metrics and predictions; a model returns the
head's output under ``output_key(name)``.
"""

from __future__ import annotations

from aver.registry import Registry

HEADS: Registry[str] = Registry("head")
HEADS.add("video", "IFE-Video: the visual stream after V-cross attention")
HEADS.add("audio", "IFE-Audio: the audio stream after A-cross attention")
HEADS.add("fusion", "IFE-Fusion: both streams concatenated")


def output_key(head: str) -> str:
    """``logits_<head>``: where a model's output dict holds the head's predictions."""
    return f"logits_{head}"


def present(outputs: dict) -> list[str]:
    """The heads with an output in ``outputs`` (in registry order)."""
    return [h for h in HEADS if outputs.get(output_key(h)) is not None]
