"""Training objectives of DE-III (paper section 3.4).

Each of the three prediction heads (video-cross, audio-cross, audio-visual fusion) has its own loss and the
objective is their sum. Discrete labels use cross-entropy; continuous labels (MSP-IMPROV arousal / valence /
dominance) use 1 - CCC, the concordance correlation coefficient of paper equation 7.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from aver.train.heads import HEADS, output_key


def _ccc_columns(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """CCC of each column: pred, target [N, K] -> [K] (float32 or wider)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"CCC needs pred and target of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.shape[0] < 2:
        # A CCC over one sample has no variance: its value says nothing about agreement. Batches for
        # a CCC objective must hold at least two clips (use drop_last when the last batch could be 1).
        raise ValueError(f"CCC needs at least 2 samples along dim 0, got {pred.shape[0]}")
    # Moments in reduced precision lose the small differences CCC is about; compute them in float32.
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    if target.dtype != pred.dtype:
        target = target.to(pred.dtype)
    mean_x, mean_y = pred.mean(dim=0), target.mean(dim=0)
    dx, dy = pred - mean_x, target - mean_y
    # Population (biased, 1/N) moments throughout: with them 2*cov/(var_x + var_y + (mx - my)^2) is exactly
    # 2*rho*sx*sy/(...) of equation 7, and CCC of a vector with itself is 1.
    var_x, var_y = (dx * dx).mean(dim=0), (dy * dy).mean(dim=0)
    cov = (dx * dy).mean(dim=0)
    return 2.0 * cov / (var_x + var_y + (mean_x - mean_y) ** 2 + eps)


def ccc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation coefficient (Lin 1989; paper equation 7).

    CCC = 2 rho sx sy / (sx^2 + sy^2 + (mx - my)^2) = 2 cov(x, y) / (var x + var y + (mx - my)^2), with
    population (1/N) means, variances and covariance. It lies in [-1, 1]: 1 for perfect agreement, -1 for
    y = 2 my - x; unlike Pearson's rho it penalises shifts and scale differences.

    Args:
        pred: predictions ``x``, float [N], N >= 2.
        target: labels ``y``, float [N].
        eps: added to the denominator so that two constant vectors give a finite value (0 when they agree
            only in being constant); it biases CCC towards 0 by about eps / (var x + var y), negligible for
            real targets.

    Returns:
        Scalar tensor (float32 for half-precision inputs, else the input dtype), differentiable.
    """
    if pred.dim() != 1:
        raise ValueError(f"ccc expects 1-D tensors [N], got {tuple(pred.shape)}; use ccc_loss for [N, K]")
    return _ccc_columns(pred[:, None], target[:, None], eps)[0]


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over targets of 1 - CCC (paper equation 7), for several continuous attributes at once.

    Args:
        pred: predictions, float [N, K] (K attributes, e.g. arousal/valence/dominance), or [N] for K = 1.
        target: labels of the same shape.
        eps: see :func:`ccc`.

    Returns:
        Scalar tensor in [0, 2]; 0 when every attribute agrees perfectly.
    """
    if pred.dim() == 1:
        pred, target = pred[:, None], target[:, None]
    if pred.dim() != 2:
        raise ValueError(f"ccc_loss expects [N, K] or [N], got {tuple(pred.shape)}")
    return (1.0 - _ccc_columns(pred, target, eps)).mean()


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Multi-class cross-entropy, averaged over the batch.

    Args:
        logits: unnormalised class scores, float [N, C].
        labels: class indices, int64 [N], each in [0, C); or soft labels, float [N, C], each row a
            distribution (consensus labels): the soft cross-entropy ``-sum_c p_c log softmax(z)_c``.
        label_smoothing: in [0, 1); 0 is the paper's plain cross-entropy.

    Returns:
        Scalar tensor.
    """
    soft = labels.is_floating_point() and labels.dim() == 2 and labels.shape == logits.shape
    if logits.dim() != 2 or not (soft or labels.dim() == 1) or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"classification_loss expects logits [N, C] and labels [N] (or soft labels [N, C]), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    target = labels.to(logits.dtype) if soft else labels.long()
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def total_loss(
    outputs: dict[str, torch.Tensor | None],
    targets: torch.Tensor,
    head_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DE-III objective: L = L_V + L_A + L_F, the sum of the heads' losses (paper section 3.4).

    Only the heads present are summed: a key that is missing or None (an ablation variant without, say, the
    fusion head) contributes nothing, so one objective serves every variant. Keys not starting with
    ``logits_`` (attention maps and the like) are ignored; an unknown ``logits_*`` key is an error rather
    than silently left out of the objective.

    Args:
        outputs: model outputs; ``logits_video``, ``logits_audio``, ``logits_fusion`` each [N, C] logits
            (classification) or [N, K] predictions (regression).
        targets: int64 [N] class indices, or float [N, K] continuous targets.
        head_loss: the task's loss of one head (``Task.head_loss``): cross-entropy or 1 - CCC.

    Returns:
        ``(total, per_head)``: the scalar objective (differentiable) and ``{head: loss}`` for the heads
        present, detached (for logging; summing them gives ``total``).
    """
    known = {output_key(h) for h in HEADS}
    unknown = sorted(k for k in outputs if k.startswith("logits_") and k not in known)
    if unknown:
        raise ValueError(f"unknown head outputs {unknown}; the heads are {sorted(known)}")
    losses = {
        h: head_loss(outputs[output_key(h)], targets) for h in HEADS if outputs.get(output_key(h)) is not None
    }
    if not losses:
        raise ValueError(f"no head outputs to train on: expected at least one of {sorted(known)}")
    total = torch.stack(list(losses.values())).sum()
    return total, {head: loss.detach() for head, loss in losses.items()}
