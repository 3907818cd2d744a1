"""The official ABAW metrics, computed globally over every valid frame they are given.

CCC is never averaged over windows or videos: a split's score is the CCC of all its valid
frames concatenated, as the challenge computes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from abaw_ray.tasks import AU_DECISION, AU_NAMES, NUM_EXPR_CLASSES, OFFICIAL_SCORE, Task


def ccc(pred: np.ndarray, target: np.ndarray) -> float:
    """Concordance correlation coefficient with population (1/N) statistics.

    ``2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)``. When both inputs are the same
    constant the denominator is 0 and agreement is perfect: 1.0; a constant against a different
    constant gives 0.0.
    """
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"ccc: prediction has {x.size} values, target {y.size}")
    if x.size == 0:
        raise ValueError("ccc: no values to score")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    if denom == 0.0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return float(2.0 * cov / denom)


def _valid_rows(mask: np.ndarray | None, n: int, what: str) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 2:
        m = m.all(axis=1)
    if m.shape != (n,):
        raise ValueError(f"{what}: mask has shape {m.shape}, expected ({n},)")
    if not m.any():
        raise ValueError(f"{what}: the mask leaves no valid frame to score")
    return m


def va_scores(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Valence, arousal and mean CCC over the valid frames. ``pred``, ``target``: [N, 2]."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    if p.shape != t.shape:
        raise ValueError(f"va_scores: prediction shape {p.shape} != target shape {t.shape}")
    m = _valid_rows(mask, len(t), "va_scores")
    v = ccc(p[m, 0], t[m, 0])
    a = ccc(p[m, 1], t[m, 1])
    return {"valence": v, "arousal": a, "mean": (v + a) / 2}


def confusion_matrix(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int = NUM_EXPR_CLASSES,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """int64 [true class, predicted class] counts of the valid frames."""
    p = np.asarray(pred).ravel().astype(np.int64)
    t = np.asarray(target).ravel().astype(np.int64)
    if p.shape != t.shape:
        raise ValueError(f"macro_f1: prediction has {p.size} values, target {t.size}")
    m = _valid_rows(mask, t.size, "macro_f1")
    p, t = p[m], t[m]
    for name, arr in (("prediction", p), ("target", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"macro_f1: {name} holds a class outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def f1_per_class(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int = NUM_EXPR_CLASSES,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """F1 of each class; NaN for a class absent from both prediction and target."""
    confusion = confusion_matrix(pred, target, num_classes, mask)
    tp = np.diag(confusion).astype(np.float64)
    denom = confusion.sum(axis=1) + confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def macro_f1(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int = NUM_EXPR_CLASSES,
    mask: np.ndarray | None = None,
) -> float:
    """Macro F1 over the classes that occur in target or prediction (sklearn's convention;
    on the official test set all 8 occur, so it equals the mean over the 8 classes)."""
    return float(np.nanmean(f1_per_class(pred, target, num_classes, mask)))


def au_f1(decisions: np.ndarray, target: np.ndarray) -> np.ndarray:
    """F1 of each unit's positive class, [N, U] 0/1 decisions against [N, U] 0/1 labels; 0 for
    a unit with no positive in either (sklearn's ``zero_division=0``)."""
    d = np.asarray(decisions).astype(bool)
    t = np.asarray(target).astype(bool)
    if d.shape != t.shape:
        raise ValueError(f"au_f1: decisions shape {d.shape} != labels shape {t.shape}")
    tp = (d & t).sum(0).astype(np.float64)
    denom = d.sum(0) + t.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


THRESHOLD_BINS = 100  # threshold candidates: 0.01 ... 0.99 (and the bins they count frames in)
# A threshold further from 0.5 must raise a unit's F1 by more than this: a flat F1 curve on a
# few selection videos would otherwise push thresholds to the extremes, which hold elsewhere.
THRESHOLD_TOLERANCE = 0.01


def best_thresholds(
    probs: np.ndarray, target: np.ndarray, tolerance: float = THRESHOLD_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's decision threshold maximising its F1 on these frames, among 0.01 ... 0.99:
    (thresholds [U], their F1 [U]). Frames are counted into ``THRESHOLD_BINS`` bins once, so
    it costs one pass over the frames, however many thresholds are tried. The threshold is the
    one nearest 0.5 among those within ``tolerance`` of the best F1."""
    p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
    t = np.asarray(target).astype(bool)
    grid = np.arange(1, THRESHOLD_BINS) / THRESHOLD_BINS
    # A frame's bin: how many thresholds it reaches (what ``p >= threshold`` decides).
    bins = np.searchsorted(grid, p, side="right")  # [N, U], 0 .. BINS - 1
    units = p.shape[1]
    offset = np.arange(units) * THRESHOLD_BINS
    pos = np.bincount((bins + offset)[t], minlength=units * THRESHOLD_BINS)
    neg = np.bincount((bins + offset)[~t], minlength=units * THRESHOLD_BINS)
    pos = pos.reshape(units, THRESHOLD_BINS)
    neg = neg.reshape(units, THRESHOLD_BINS)
    # Threshold grid[j] calls present every frame in bins j + 1 and above.
    tp = np.cumsum(pos[:, ::-1], 1)[:, ::-1][:, 1:]
    fp = np.cumsum(neg[:, ::-1], 1)[:, ::-1][:, 1:]
    positives = pos.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp + fp + positives > 0, 2 * tp / (tp + fp + positives), 0.0)
    # Among the thresholds within ``tolerance`` of the best F1, the one nearest 0.5.
    near = f1 >= f1.max(1, keepdims=True) - tolerance - 1e-12
    k = np.argmin(np.where(near, np.abs(grid - 0.5), np.inf), axis=1)
    return grid[k], f1[np.arange(units), k]


def calibrate_thresholds(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Probabilities mapped, unit by unit and monotonically, so that each unit's threshold
    lands on ``AU_DECISION`` (0.5): [0, th] -> [0, 0.5], [th, 1] -> [0.5, 1]. What an
    ensemble recipe applies, so that every later stage (score, submission, pseudo-labels)
    decides at 0.5."""
    p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
    th = np.clip(np.asarray(thresholds, np.float64), 1e-6, 1 - 1e-6)
    low = AU_DECISION * p / th
    high = AU_DECISION + (1 - AU_DECISION) * (p - th) / (1 - th)
    return np.where(p < th, low, high)


def flatten_split(
    preds: Mapping[str, np.ndarray],
    videos: Sequence[str],
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-video predictions and labels of ``videos`` concatenated in one timeline, keeping
    the valid frames only: (predictions [N, ...], labels [N, ...])."""
    if not videos:
        raise ValueError("no videos to score")
    m = np.concatenate([np.asarray(valid[v], bool) for v in videos])
    p = np.concatenate([preds[v] for v in videos])
    t = np.concatenate([labels[v] for v in videos])
    if len(p) != len(m) or len(t) != len(m):
        raise ValueError(f"predictions ({len(p)}) and labels ({len(t)}) of {len(m)} frames")
    return p[m], t[m]


def score_split(
    task: Task,
    preds: Mapping[str, np.ndarray],
    videos: Sequence[str],
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
) -> dict[str, float]:
    """The official score of a split: every valid frame of ``videos`` at once.

    VA (``preds[v]``: [T, 2] values): ``ccc`` (the mean), ``ccc_valence``, ``ccc_arousal``.
    EXPR (``preds[v]``: [T, 8] class scores; the argmax is the decision): ``f1`` (macro) and
    ``f1_class<c>`` per class (0 for a class absent from labels and predictions).
    AU (``preds[v]``: [T, 12] probabilities; a unit is present at ``AU_DECISION`` and above):
    ``f1``, the mean over the 12 units of each unit's positive-class F1, and ``f1_<AU>`` per
    unit (``f1_AU1`` ...; 0 for a unit with no positive in labels or decisions).
    """
    p, t = flatten_split(preds, videos, labels, valid)
    key = OFFICIAL_SCORE[task]
    if task == "va":
        s = va_scores(p, t)
        return {key: s["mean"], f"{key}_valence": s["valence"], f"{key}_arousal": s["arousal"]}
    if task == "au":
        per_unit = au_f1(p >= AU_DECISION, t)
        return {key: float(per_unit.mean())} | {
            f"{key}_{name}": float(f) for name, f in zip(AU_NAMES, per_unit)
        }
    decided = p.argmax(-1)
    per_class = f1_per_class(decided, t, NUM_EXPR_CLASSES)
    out = {key: float(np.nanmean(per_class))}
    out.update({f"{key}_class{c}": float(np.nan_to_num(f)) for c, f in enumerate(per_class)})
    return out


def majority_baseline(
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
    train: Sequence[str],
    videos: Sequence[str],
) -> float:
    """EXPR: macro F1 on ``videos`` of always predicting the most frequent class of the
    ``train`` videos."""
    counts = np.concatenate([labels[v][valid[v]] for v in train])
    majority = np.bincount(counts, minlength=NUM_EXPR_CLASSES).argmax()
    preds = {v: np.eye(NUM_EXPR_CLASSES)[np.full(len(labels[v]), majority)] for v in videos}
    return score_split("expr", preds, videos, labels, valid)["f1"]


def tuned_au_f1(
    preds: Mapping[str, np.ndarray],
    videos: Sequence[str],
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, float]:
    """AU probabilities of ``videos`` with each unit's threshold chosen on them
    (``best_thresholds`` over every valid frame at once): (thresholds [12], the mean F1 they
    reach there: optimistic on these videos, which chose them)."""
    p, t = flatten_split(preds, videos, labels, valid)
    thresholds, f1 = best_thresholds(p, t)
    return thresholds, float(f1.mean())
