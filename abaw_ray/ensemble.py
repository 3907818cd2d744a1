"""The ensemble stage: the top trials' per-frame predictions -> greedy forward selection with
replacement (Caruana et al., 2004) -> temporal smoothing chosen on validation (every kind and
width of ``abaw_ray.smoothing``: box and Gaussian for VA; those over class probabilities and a
mode filter over classes for EXPR).

VA selects members separately for valence and arousal (each by its own global CCC); EXPR
averages class probabilities and selects by macro F1. Selection starts from the best single
trial and only adds a member when the score rises.

A score chosen on some videos is optimistic on them. ``build_ensemble`` therefore fits the
recipe on the selection videos only, scores it and the best single trial once on the held-out
videos that nothing selected on (the honest estimate), then refits the recipe, by the same
procedure, on all validation videos for the submission.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from abaw_ray.metrics import ccc, flatten_split, macro_f1, score_split
from abaw_ray.pseudo import PseudoLabels, make_pseudo_labels
from abaw_ray.smoothing import NO_SMOOTHING, Smoothing, candidates
from abaw_ray.tasks import NUM_EXPR_CLASSES, OFFICIAL_SCORE, Task


@dataclass
class Member:
    """One trial's per-frame predictions: ``val`` holds every validation video (selection and
    held-out), ``test`` every test video, ``unlabelled`` the training videos with unlabelled
    frames (when the search makes pseudo-labels)."""

    trial_id: str
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    description: str = ""
    unlabelled: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Recipe:
    """Per target (``valence``/``arousal``, or ``classes``): member weights and smoothing."""

    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    smoothing: dict[str, Smoothing] = field(default_factory=dict)

    def smoothing_names(self) -> dict[str, str]:
        """``{"valence": "gaussian(25)", ...}``: how a report or MLflow shows the filters."""
        return {name: str(s) for name, s in self.smoothing.items()}


@dataclass
class Fit:
    """A recipe fitted on ``videos``, its official scores there (optimistic: chosen there),
    and the best single member there."""

    recipe: Recipe
    videos: tuple[str, ...]
    scores: dict[str, float]
    best_single: tuple[str, dict[str, float]]

    @property
    def score(self) -> float:
        return next(iter(self.scores.values()))


@dataclass
class EnsembleResult:
    """``selection``: fitted on the selection videos; ``holdout``: that recipe and that best
    single trial scored on the held-out videos (empty without any); ``submitted``: the recipe
    refit on all validation videos, whose ``test`` predictions are submitted."""

    selection: Fit
    holdout: dict[str, dict[str, float]]
    submitted: Fit
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


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
    task: Task,
    smoothing: Smoothing,
) -> dict[str, np.ndarray]:
    total = sum(weights.values())
    out = {}
    for v in videos:
        acc = sum(
            w * getattr(m, split)[v][:, part]
            for m in members
            if (w := weights.get(m.trial_id, 0.0))
        )
        out[v] = smoothing.apply(task, acc / total)
    return out


def _select(
    task: Task,
    members: Sequence[Member],
    part: slice,
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    rounds: int,
) -> tuple[dict[str, float], Smoothing, float]:
    """Greedy forward selection with replacement, then the best smoothing (ties: none, then
    the narrower filter)."""
    # Flattened once; the greedy loop then scores sums of these arrays.
    flat = [flatten_split(mem.val, videos, labels, valid) for mem in members]
    t = flat[0][1][:, part.start] if task == "va" else flat[0][1]
    stacked = [p[:, part] for p, _ in flat]
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
    best_smoothing, best_score = NO_SMOOTHING, -np.inf
    for smoothing in candidates(task):
        pred, _ = flatten_split(
            _combine(members, weights, part, "val", videos, task, smoothing), videos, labels, valid
        )
        s = _score(task, pred, t)
        if s > best_score + 1e-9:
            best_smoothing, best_score = smoothing, s
    return weights, best_smoothing, best_score


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
        w, smoothing, s = _select(task, members, part, videos, labels, valid, rounds)
        recipe.weights[name], recipe.smoothing[name] = w, smoothing
        scores[name] = s
    return recipe, scores


def apply_recipe(
    task: Task, members: Sequence[Member], recipe: Recipe, split: str, videos: Sequence[str]
) -> dict[str, np.ndarray]:
    parts = [
        _combine(members, recipe.weights[name], part, split, videos, task, recipe.smoothing[name])
        for name, part in _targets(task).items()
    ]
    return {v: np.concatenate([p[v] for p in parts], axis=1) for v in videos}


def fit_recipe(
    task: Task,
    members: Sequence[Member],
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    rounds: int = 25,
) -> Fit:
    """Greedy selection and smoothing of ``members`` on ``videos`` (validation videos)."""
    if not members:
        raise ValueError("no trial finished with a checkpoint: nothing to ensemble")
    videos = tuple(videos)
    recipe, _ = _fit(task, members, videos, labels, valid, rounds)
    pred = apply_recipe(task, members, recipe, "val", videos)
    singles = {m.trial_id: score_split(task, m.val, videos, labels, valid) for m in members}
    key = OFFICIAL_SCORE[task]
    best_id = max(singles, key=lambda t: singles[t][key])
    return Fit(
        recipe, videos, score_split(task, pred, videos, labels, valid), (best_id, singles[best_id])
    )


def build_ensemble(
    task: Task,
    members: Sequence[Member],
    selection_videos: Sequence[str],
    holdout_videos: Sequence[str],
    test_videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    rounds: int = 25,
) -> EnsembleResult:
    """Fit on the selection videos, estimate on the held-out ones (scored once, selecting
    nothing), refit on both for the submission."""
    selection = fit_recipe(task, members, selection_videos, labels, valid, rounds)
    holdout: dict[str, dict[str, float]] = {}
    if holdout_videos:
        held = list(holdout_videos)
        by_id = {m.trial_id: m for m in members}
        pred = apply_recipe(task, members, selection.recipe, "val", held)
        holdout["ensemble"] = score_split(task, pred, held, labels, valid)
        best = by_id[selection.best_single[0]]
        holdout["best_single"] = score_split(task, best.val, held, labels, valid)
    everything = [*selection_videos, *holdout_videos]
    submitted = (
        fit_recipe(task, members, everything, labels, valid, rounds)
        if holdout_videos
        else selection
    )
    return EnsembleResult(
        selection,
        holdout,
        submitted,
        apply_recipe(task, members, submitted.recipe, "val", everything),
        apply_recipe(task, members, submitted.recipe, "test", list(test_videos)),
    )


def ensemble_pseudo_labels(
    task: Task,
    members: Sequence[Member],
    ens: EnsembleResult,
    valid: dict[str, np.ndarray | None],
    source: str,
) -> PseudoLabels:
    """Pseudo-labels of the training videos' unlabelled frames and of the test videos, made by
    the recipe fitted on the selection videos alone (never the submitted one, which the
    held-out videos helped fit): a later search that trains on them and holds out the same
    videos (recorded in the file) scores them on videos nothing here chose by. EXPR
    confidence is the class's probability before a mode filter (``make_pseudo_labels``)."""
    recipe = ens.selection.recipe
    unlabelled = sorted(set.intersection(*(set(m.unlabelled) for m in members)))
    test = sorted(set.intersection(*(set(m.test) for m in members)))
    predicted = {
        **apply_recipe(task, members, recipe, "unlabelled", unlabelled),
        **apply_recipe(task, members, recipe, "test", test),
    }
    probabilities = None
    if any(s.kind == "mode" for s in recipe.smoothing.values()):
        unfiltered = Recipe(
            recipe.weights,
            {k: NO_SMOOTHING if s.kind == "mode" else s for k, s in recipe.smoothing.items()},
        )
        probabilities = {
            **apply_recipe(task, members, unfiltered, "unlabelled", unlabelled),
            **apply_recipe(task, members, unfiltered, "test", test),
        }
    per_member = [{**m.unlabelled, **m.test} for m in members]
    labelled = {v: valid.get(v) for v in predicted}
    pseudo = make_pseudo_labels(task, predicted, per_member, labelled, source, probabilities)
    return replace(
        pseudo,
        selection_videos=tuple(ens.selection.videos),
        holdout_videos=tuple(v for v in ens.submitted.videos if v not in ens.selection.videos),
    )
