"""Training losses: CCC loss for VA; soft macro-F1, label-smoothed cross entropy and focal loss
for EXPR; binary cross entropy with per-unit positive weights, its focal and asymmetric
variants and a soft mean-F1 for AU (multi-label).

Each takes an optional validity mask so -5 / -1 frames never contribute.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from abaw_ray.tasks import NUM_EXPR_CLASSES


def _flat_valid(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    last: int,
    frame_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    p, t = pred.reshape(-1, last), target.reshape(-1, last)
    w = None if frame_weight is None else frame_weight.reshape(-1).to(p.dtype)
    if mask is not None:
        m = mask.reshape(-1).bool()
        if m.numel() != p.shape[0]:
            raise ValueError(f"mask has {m.numel()} frames, predictions {p.shape[0]}")
        p, t = p[m], t[m]
        w = None if w is None else w[m]
    return p, t, w


def ccc_per_target(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable CCC of each target column over all valid frames (their moments weighted
    by ``frame_weight`` when given). ``[..., D] -> [D]``."""
    d = pred.shape[-1]
    p, t, w = _flat_valid(pred, target, mask, d, frame_weight)
    if p.shape[0] == 0 or (w is not None and float(w.sum()) <= 0):
        return pred.new_zeros(d)
    if w is None:
        mean = lambda x: x.mean(0)  # noqa: E731
    else:
        w = (w / w.sum())[:, None]
        mean = lambda x: (w * x).sum(0)  # noqa: E731
    mp, mt = mean(p), mean(t)
    vp = mean((p - mp) ** 2)
    vt = mean((t - mt) ** 2)
    cov = mean((p - mp) * (t - mt))
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: tuple[float, ...] | None = None,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over targets of ``1 - CCC`` (``weights``: per target); finite on constant inputs
    (the eps in CCC's denominator), 0 gradient when no frame is valid."""
    per = 1.0 - ccc_per_target(pred, target, mask, frame_weight=frame_weight)
    if weights is None:
        return per.mean()
    w = per.new_tensor(weights)
    return (per * w).sum() / w.sum()


def soft_macro_f1_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-7,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - mean_c soft-F1_c`` from softmax probabilities, over the classes present in the
    batch's targets (a class absent from a batch has no F1 to learn from); a frame counts
    ``frame_weight`` times in the soft counts."""
    c = logits.shape[-1]
    lg, t, w = _flat_logits(logits, target, mask, frame_weight)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    prob = lg.softmax(-1)
    onehot = F.one_hot(t, c).to(prob.dtype)
    ww = prob.new_ones(len(prob), 1) if w is None else w[:, None]
    tp = (ww * prob * onehot).sum(0)
    fp = (ww * prob * (1 - onehot)).sum(0)
    fn = (ww * (1 - prob) * onehot).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    present = (ww * onehot).sum(0) > 0
    return 1.0 - f1[present].mean()


def _flat_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    frame_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    lg = logits.reshape(-1, logits.shape[-1])
    t = target.reshape(-1).long()
    keep = t >= 0
    if mask is not None:
        keep = keep & mask.reshape(-1).bool()
    w = None if frame_weight is None else frame_weight.reshape(-1).to(lg.dtype)[keep]
    return lg[keep], t[keep], w


def smoothed_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross entropy with label smoothing; -1 targets and masked frames are ignored. With
    ``frame_weight`` the mean is weighted by it (times the class weight, as torch weighs)."""
    lg, t, w = _flat_logits(logits, target, mask, frame_weight)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    if w is None:
        return F.cross_entropy(lg, t, weight=class_weights, label_smoothing=smoothing)
    per = F.cross_entropy(lg, t, weight=class_weights, label_smoothing=smoothing, reduction="none")
    norm = w if class_weights is None else w * class_weights.to(w)[t]
    return (w * per).sum() / norm.sum().clamp(min=1e-12)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    gamma: float = 2.0,  # Lin et al. (2017)'s best setting; 0 gives cross entropy
    class_weights: torch.Tensor | None = None,  # alpha_c per class; None: all 1
    frame_weight: torch.Tensor | None = None,  # per frame; None: all 1
) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): the mean over valid frames of
    ``-alpha_c (1 - p_t)^gamma log p_t``, ``p_t`` the softmax probability of the true class.

    -1 targets and masked frames are ignored, as in ``smoothed_cross_entropy``; 0 (with a
    gradient) when no frame is valid. At ``gamma=0`` without ``class_weights`` it is cross
    entropy; with them, the mean still divides by the number of valid frames, not by the sum
    of their weights as ``F.cross_entropy(weight=...)`` does."""
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
    lg, t, w = _flat_logits(logits, target, mask, frame_weight)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    logp_t = lg.float().log_softmax(-1).gather(1, t[:, None])[:, 0]
    per_frame = -logp_t
    if gamma > 0:
        # 1 - p_t as -expm1(log p_t): exact for confident frames; clamped against rounding.
        per_frame = per_frame * (-torch.expm1(logp_t)).clamp(min=0.0) ** gamma
    if class_weights is not None:
        per_frame = per_frame * class_weights.to(per_frame)[t]
    if w is not None:
        return (w.to(per_frame) * per_frame).sum() / w.sum().clamp(min=1e-12)
    return per_frame.mean()


def class_weights(targets: np.ndarray, num_classes: int = NUM_EXPR_CLASSES) -> torch.Tensor:
    """Inverse-frequency class weights of integer ``targets`` (valid frames only), with one
    pseudo-count per class so an absent class gets a large finite weight; mean 1."""
    counts = np.bincount(np.asarray(targets, np.int64), minlength=num_classes) + 1.0
    w = counts.sum() / (num_classes * counts)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def _flat_units(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    frame_weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return _flat_valid(logits, target.to(logits.dtype), mask, logits.shape[-1], frame_weight)


def _mean_over_frames(per: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """[N, U] per-frame, per-unit losses -> their mean (frames weighted by ``w``)."""
    per_frame = per.mean(-1)
    if w is None:
        return per_frame.mean()
    return (w * per_frame).sum() / w.sum().clamp(min=1e-12)


def au_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,  # per unit, [U]; None: all 1
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross entropy of each unit's logit against its 0/1 label, averaged over units and
    valid frames; ``pos_weight`` weighs a unit's positive frames (``au_pos_weights``)."""
    lg, t, w = _flat_units(logits, target, mask, frame_weight)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    per = F.binary_cross_entropy_with_logits(
        lg.float(),
        t.float(),
        pos_weight=None if pos_weight is None else pos_weight.to(lg.device),
        reduction="none",
    )
    return _mean_over_frames(per, w)


def au_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    gamma: float = 2.0,  # Lin et al. (2017)'s best setting; 0 gives BCE
    pos_weight: torch.Tensor | None = None,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary focal loss: each unit's BCE times ``(1 - p_t)^gamma``, ``p_t`` the probability
    of the frame's true 0/1 label, so frames already right count less."""
    if gamma < 0:
        raise ValueError(f"au_focal_loss: gamma must be >= 0, got {gamma}")
    lg, t, w = _flat_units(logits, target, mask, frame_weight)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    lg, t = lg.float(), t.float()
    per = F.binary_cross_entropy_with_logits(
        lg,
        t,
        pos_weight=None if pos_weight is None else pos_weight.to(lg.device),
        reduction="none",
    )
    p = torch.sigmoid(lg)
    p_t = torch.where(t > 0.5, p, 1 - p)
    return _mean_over_frames(per * (1 - p_t).clamp(min=0.0) ** gamma, w)


def au_asymmetric_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    gamma_neg: float = 4.0,  # Ridnik et al. (2021)'s settings: negatives focused hard
    gamma_pos: float = 0.0,  # positives as in BCE
    clip: float = 0.05,  # a negative below this probability costs nothing
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., 2021) for the rare units: positives ``-(1-p)^gamma_pos
    log p``; negatives, their probability shifted down by ``clip``, ``-p_m^gamma_neg
    log(1 - p_m)``, so the many easy negatives of a rare unit barely count."""
    lg, t, w = _flat_units(logits, target, mask, frame_weight)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    lg, t = lg.float(), t.float()
    p = torch.sigmoid(lg)
    p_m = (p - clip).clamp(min=0.0)
    pos = -t * (1 - p) ** gamma_pos * F.logsigmoid(lg)
    neg = -(1 - t) * p_m**gamma_neg * torch.log((1 - p_m).clamp(min=1e-8))
    return _mean_over_frames(pos + neg, w)


def soft_au_f1_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-7,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - mean_u soft-F1_u`` from each unit's sigmoid probability, over the units with a
    positive frame in the batch (the official AU score, made differentiable)."""
    lg, t, w = _flat_units(logits, target, mask, frame_weight)
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    p = torch.sigmoid(lg.float())
    t = t.float()
    ww = p.new_ones(len(p), 1) if w is None else w[:, None].float()
    tp = (ww * p * t).sum(0)
    fp = (ww * p * (1 - t)).sum(0)
    fn = (ww * (1 - p) * t).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    present = (ww * t).sum(0) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1.0 - f1[present].mean()


MAX_POS_WEIGHT = 20.0  # a unit's positive weight at most (a unit almost never present)


def au_pos_weights(targets: np.ndarray) -> torch.Tensor:
    """Per-unit positive weights of [N, U] 0/1 ``targets`` (valid frames only): negatives over
    positives, with one pseudo-count each, at most ``MAX_POS_WEIGHT``."""
    t = np.asarray(targets, np.float64)
    pos = t.sum(0) + 1.0
    neg = (1 - t).sum(0) + 1.0
    return torch.tensor(np.minimum(neg / pos, MAX_POS_WEIGHT), dtype=torch.float32)
