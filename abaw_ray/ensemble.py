"""The ensemble stage: the top trials' per-frame predictions -> greedy forward selection with
replacement (Caruana et al., 2004) -> temporal smoothing chosen on validation.

VA selects members separately for valence and arousal (each by its own global CCC); EXPR
averages class probabilities and selects by macro F1. Selection starts from the best single
trial and only adds a member when the score rises, so the ensemble's validation score is at
least the best single trial's. Because that score is chosen on the validation set it is
optimistic; the split-half estimate selects on half of the validation videos and scores on
the other half (both ways) to say what to expect on unseen videos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from abaw_ray.data.labels import NUM_EXPR_CLASSES, Task
from abaw_ray.metrics import ccc, macro_f1

SMOOTHING_WINDOWS = (1, 3, 5, 9, 15, 25, 41)


@dataclass
class Member:
    trial_id: str
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    description: str = ""


@dataclass
class Recipe:
    """Per target (``valence``/``arousal``, or ``classes``): member weights and smoothing."""

    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    smoothing: dict[str, int] = field(default_factory=dict)


@dataclass
class EnsembleResult:
    recipe: Recipe
    val_score: float
    val_scores: dict[str, float]
    best_single: tuple[str, float]
    split_half: dict[str, float]
    test: dict[str, np.ndarray]
    val: dict[str, np.ndarray]


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along time (edges averaged over what exists)."""
    if window <= 1:
        return x
    x2 = x if x.ndim == 2 else x[:, None]
    kernel = np.ones(window)
    pad = window // 2
    num = np.stack([np.convolve(np.pad(c, pad), kernel, "valid") for c in x2.T], 1)
    den = np.convolve(np.pad(np.ones(len(x2)), pad), kernel, "valid")[:, None]
    out = num / den
    return out if x.ndim == 2 else out[:, 0]


def _targets(task: Task) -> dict[str, slice]:
    return (
        {"valence": slice(0, 1), "arousal": slice(1, 2)}
        if task == "va"
        else {"classes": slice(0, NUM_EXPR_CLASSES)}
    )


def _score(task: Task, pred: np.ndarray, target: np.ndarray) -> float:
    if task == "va":
        return ccc(pred[:, 0], target)
    return macro_f1(pred.argmax(-1), target, NUM_EXPR_CLASSES)


def _combine(
    members: Sequence[Member],
    weights: dict[str, float],
    part: slice,
    split: str,
    videos: Sequence[str],
    window: int,
) -> dict[str, np.ndarray]:
    total = sum(weights.values())
    out = {}
    for v in videos:
        acc = sum(
            w * getattr(m, split)[v][:, part]
            for m in members
            if (w := weights.get(m.trial_id, 0.0))
        )
        out[v] = smooth(acc / total, window)
    return out


def _select(
    task: Task,
    members: Sequence[Member],
    part: slice,
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    rounds: int,
) -> tuple[dict[str, float], int, float]:
    """Greedy forward selection with replacement, then the best smoothing window."""
    m = np.concatenate([valid[v] for v in videos])
    t = np.concatenate([labels[v] for v in videos])
    if task == "va":
        t = t[:, part.start]
    t = t[m]
    stacked = [np.concatenate([mem.val[v][:, part] for v in videos])[m] for mem in members]
    singles = [_score(task, p, t) for p in stacked]
    first = int(np.argmax(singles))
    counts = np.zeros(len(members))
    counts[first] = 1
    acc = stacked[first].copy()
    best = singles[first]
    for _ in range(rounds):
        n = counts.sum()
        trial = [_score(task, (acc + p) / (n + 1), t) for p in stacked]
        j = int(np.argmax(trial))
        if trial[j] <= best + 1e-6:
            break
        counts[j] += 1
        acc = acc + stacked[j]
        best = trial[j]
    weights = {mem.trial_id: float(c) for mem, c in zip(members, counts) if c}
    best_window, best_score = 1, -np.inf
    for w in SMOOTHING_WINDOWS:
        pred = _combine(members, weights, part, "val", videos, w)
        s = _score(task, np.concatenate([pred[v] for v in videos])[m], t)
        if s > best_score + 1e-9:
            best_window, best_score = w, s
    return weights, best_window, best_score


def _fit(
    task: Task,
    members: Sequence[Member],
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    rounds: int,
) -> tuple[Recipe, dict[str, float]]:
    recipe = Recipe()
    scores = {}
    for name, part in _targets(task).items():
        w, window, s = _select(task, members, part, videos, labels, valid, rounds)
        recipe.weights[name], recipe.smoothing[name] = w, window
        scores[name] = s
    return recipe, scores


def apply_recipe(
    task: Task, members: Sequence[Member], recipe: Recipe, split: str, videos: Sequence[str]
) -> dict[str, np.ndarray]:
    parts = [
        _combine(members, recipe.weights[name], part, split, videos, recipe.smoothing[name])
        for name, part in _targets(task).items()
    ]
    return {v: np.concatenate([p[v] for p in parts], axis=1) for v in videos}


def score_predictions(
    task: Task,
    preds: dict[str, np.ndarray],
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
) -> float:
    m = np.concatenate([valid[v] for v in videos])
    p = np.concatenate([preds[v] for v in videos])[m]
    t = np.concatenate([labels[v] for v in videos])[m]
    if task == "va":
        return (ccc(p[:, 0], t[:, 0]) + ccc(p[:, 1], t[:, 1])) / 2
    return macro_f1(p.argmax(-1), t, NUM_EXPR_CLASSES)


def build_ensemble(
    task: Task,
    members: Sequence[Member],
    val_videos: Sequence[str],
    test_videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    rounds: int = 25,
) -> EnsembleResult:
    if not members:
        raise ValueError("no trial finished with a checkpoint: nothing to ensemble")
    val_videos = list(val_videos)
    singles = {
        m.trial_id: score_predictions(task, m.val, val_videos, labels, valid) for m in members
    }
    best_id = max(singles, key=singles.get)
    recipe, per_target = _fit(task, members, val_videos, labels, valid, rounds)
    val_pred = apply_recipe(task, members, recipe, "val", val_videos)
    val_score = score_predictions(task, val_pred, val_videos, labels, valid)

    ordered = sorted(val_videos)
    half_a, half_b = ordered[0::2], ordered[1::2]
    split_half: dict[str, float] = {}
    if half_a and half_b:
        for name, sel, held in (("A->B", half_a, half_b), ("B->A", half_b, half_a)):
            r, _ = _fit(task, members, sel, labels, valid, rounds)
            held_pred = apply_recipe(task, members, r, "val", held)
            split_half[name] = score_predictions(task, held_pred, held, labels, valid)
            single = max(members, key=lambda m: score_predictions(task, m.val, sel, labels, valid))
            split_half[f"best single {name}"] = score_predictions(
                task, single.val, held, labels, valid
            )
        split_half["mean"] = (split_half["A->B"] + split_half["B->A"]) / 2
        split_half["best single mean"] = (
            split_half["best single A->B"] + split_half["best single B->A"]
        ) / 2
    test = apply_recipe(task, members, recipe, "test", list(test_videos))
    return EnsembleResult(
        recipe, val_score, per_target, (best_id, singles[best_id]), split_half, test, val_pred
    )
