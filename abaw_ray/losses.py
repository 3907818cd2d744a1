"""Training losses: CCC loss for VA, soft macro-F1 and label-smoothed cross entropy for EXPR.

Each takes an optional validity mask so -5 / -1 frames never contribute.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from abaw_ray.tasks import NUM_EXPR_CLASSES


def _flat_valid(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, last: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if last is None:
        p, t = pred.reshape(-1), target.reshape(-1)
    else:
        p, t = pred.reshape(-1, last), target.reshape(-1, last)
    if mask is not None:
        m = mask.reshape(-1).bool()
        if m.numel() != p.shape[0]:
            raise ValueError(f"mask has {m.numel()} frames, predictions {p.shape[0]}")
        p, t = p[m], t[m]
    return p, t


def ccc_per_target(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """Differentiable CCC of each target column over all valid frames. ``[..., D] -> [D]``."""
    d = pred.shape[-1]
    p, t = _flat_valid(pred, target, mask, d)
    if p.shape[0] == 0:
        return pred.new_zeros(d)
    mp, mt = p.mean(0), t.mean(0)
    vp = ((p - mp) ** 2).mean(0)
    vt = ((t - mt) ** 2).mean(0)
    cov = ((p - mp) * (t - mt)).mean(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """Mean over targets of ``1 - CCC``; finite on constant inputs (the eps in CCC's
    denominator), 0 gradient when no frame is valid."""
    per = 1.0 - ccc_per_target(pred, target, mask)
    if weights is None:
        return per.mean()
    w = per.new_tensor(weights)
    return (per * w).sum() / w.sum()


def soft_macro_f1_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-7
) -> torch.Tensor:
    """``1 - mean_c soft-F1_c`` from softmax probabilities, over the classes present in the
    batch's targets (a class absent from a batch has no F1 to learn from)."""
    c = logits.shape[-1]
    lg, t = _flat_logits(logits, target, mask)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    prob = lg.softmax(-1)
    onehot = F.one_hot(t, c).to(prob.dtype)
    tp = (prob * onehot).sum(0)
    fp = (prob * (1 - onehot)).sum(0)
    fn = ((1 - prob) * onehot).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    present = onehot.sum(0) > 0
    return 1.0 - f1[present].mean()


def _flat_logits(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    lg = logits.reshape(-1, logits.shape[-1])
    t = target.reshape(-1).long()
    keep = t >= 0
    if mask is not None:
        keep = keep & mask.reshape(-1).bool()
    return lg[keep], t[keep]


def smoothed_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross entropy with label smoothing; -1 targets and masked frames are ignored."""
    lg, t = _flat_logits(logits, target, mask)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(lg, t, weight=class_weights, label_smoothing=smoothing)


def class_weights(targets: np.ndarray, num_classes: int = NUM_EXPR_CLASSES) -> torch.Tensor:
    """Inverse-frequency class weights of integer ``targets`` (valid frames only), with one
    pseudo-count per class so an absent class gets a large finite weight; mean 1."""
    counts = np.bincount(np.asarray(targets, np.int64), minlength=num_classes) + 1.0
    w = counts.sum() / (num_classes * counts)
    return torch.tensor(w / w.mean(), dtype=torch.float32)
