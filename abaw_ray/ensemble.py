"""The ensemble stage: the top trials' per-frame predictions -> member weights by an ensemble
method -> temporal smoothing chosen on validation (``smoothing.choose_smoothing``: box and
Gaussian for VA; those over class probabilities and a mode filter over classes for EXPR; those
and a running median over each unit's probability for AU) -> for AU, each unit's decision
threshold.

Methods are registered by name (``register_ensemble_method``; the search job's ``--ensemble``):
``greedy``, forward selection with replacement (Caruana et al., 2004), starting from the best
single trial and adding a member only when the score rises; ``mean``, every member equally (the
fold ensemble's). VA weighs and smooths valence and arousal separately (each by its own global
CCC); EXPR averages class probabilities and goes by macro F1; AU averages the 12 units'
probabilities and goes by their mean F1 with each unit's threshold tuned.

A score chosen on some videos is optimistic on them. ``build_ensemble`` therefore fits the
recipe on the selection videos only, scores it and the best single trial once on the held-out
videos that nothing selected on (the honest estimate), then refits the recipe, by the same
procedure, on all validation videos for the submission. AU is the exception: its
thresholds, like everything else in its recipe, come from the selection videos only, and the
selection recipe is the one submitted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from abaw_ray.metrics import (
    best_thresholds,
    calibrate_thresholds,
    ccc,
    flatten_split,
    macro_f1,
    score_split,
    tuned_au_f1,
)
from abaw_ray.pseudo import PseudoLabels, make_pseudo_labels
from abaw_ray.smoothing import NO_SMOOTHING, Smoothing, choose_smoothing
from abaw_ray.tasks import KIND, NUM_AUS, NUM_EXPR_CLASSES, OFFICIAL_SCORE, Task


@dataclass
class Member:
    """One trial's per-frame predictions: ``validation`` holds every validation video
    (selection and held-out), ``test`` every test video, ``unlabelled`` the training videos
    with unlabelled frames (when the search makes pseudo-labels)."""

    trial_id: str
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    description: str = ""
    unlabelled: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Recipe:
    """Per target (``valence``/``arousal``, ``classes`` or ``units``): member weights and
    smoothing; for AU, each unit's decision threshold too (``apply_recipe`` maps it to 0.5)."""

    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    smoothing: dict[str, Smoothing] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=list)  # AU: one per unit; else empty

    def used_trials(self) -> set[str]:
        """The trials with a non-zero weight for some target."""
        return {t for w in self.weights.values() for t, x in w.items() if x}

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
    validation: dict[str, np.ndarray]  # the submitted recipe's, of every validation video
    test: dict[str, np.ndarray]
    holdout_videos: tuple[str, ...] = ()  # scored once, chosen by nothing

    @property
    def refit(self) -> bool:
        """Whether the submitted recipe was refit on the selection and held-out videos."""
        return self.submitted is not self.selection


TARGETS: dict[str, dict[str, slice]] = {
    "regression": {"valence": slice(0, 1), "arousal": slice(1, 2)},
    "multiclass": {"classes": slice(0, NUM_EXPR_CLASSES)},
    "multilabel": {"units": slice(0, NUM_AUS)},
}
TARGET_SCORE = {"valence": "ccc_valence", "arousal": "ccc_arousal", "classes": "f1", "units": "f1"}


def _targets(task: Task) -> dict[str, slice]:
    return TARGETS[KIND[task]]


def _score(task: Task, pred: np.ndarray, target: np.ndarray) -> float:
    if KIND[task] == "regression":
        return ccc(pred[:, 0], target)
    if KIND[task] == "multilabel":  # each unit at its best threshold on these frames
        return float(best_thresholds(pred, target)[1].mean())
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
    """Each video's weighted mean over the members that predicted it (fold models each
    predict their own fold's videos: the mean is then that fold's prediction), smoothed."""
    out = {}
    for v in videos:
        have = [(w, m) for m in members if (w := weights.get(m.trial_id, 0.0))]
        have = [(w, m) for w, m in have if v in getattr(m, split)]
        if not have:
            raise KeyError(f"no member of the recipe predicted video {v} ({split})")
        acc = sum(w * getattr(m, split)[v][:, part] for w, m in have)
        out[v] = smoothing.apply(task, acc / sum(w for w, _ in have))
    return out


# An ensemble method: (task, members, one target's columns, videos, labels, valid) -> that
# target's member weights. The recipe's smoothing is then chosen the same way for every method.
EnsembleMethod = Callable[..., dict[str, float]]
_METHODS: dict[str, EnsembleMethod] = {}
GREEDY_ROUNDS = 25  # greedy selection's additions at most


def register_ensemble_method(name: str) -> Callable[[EnsembleMethod], EnsembleMethod]:
    def deco(fn: EnsembleMethod) -> EnsembleMethod:
        if name in _METHODS:
            raise ValueError(f"ensemble method {name} registered twice")
        _METHODS[name] = fn
        return fn

    return deco


def list_ensemble_methods() -> list[str]:
    return sorted(_METHODS)


@register_ensemble_method("greedy")
def greedy(
    task: Task,
    members: Sequence[Member],
    part: slice,
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
) -> dict[str, float]:
    """Greedy forward selection with replacement (Caruana et al., 2004): start from the best
    member, add whichever member raises the score most, stop when none does."""
    # Flattened once; the greedy loop then scores sums of these arrays.
    flat = [flatten_split(mem.validation, videos, labels, valid) for mem in members]
    t = flat[0][1][:, part.start] if KIND[task] == "regression" else flat[0][1]
    stacked = [p[:, part] for p, _ in flat]
    singles = [_score(task, p, t) for p in stacked]
    first = int(np.argmax(singles))
    counts = np.zeros(len(members))
    counts[first] = 1
    acc = stacked[first].copy()
    best = singles[first]
    for _ in range(GREEDY_ROUNDS):
        n = counts.sum()
        trial = [_score(task, (acc + p) / (n + 1), t) for p in stacked]
        j = int(np.argmax(trial))
        if trial[j] <= best + 1e-6:
            break
        counts[j] += 1
        acc = acc + stacked[j]
        best = trial[j]
    return {mem.trial_id: float(c) for mem, c in zip(members, counts) if c}


@register_ensemble_method("mean")
def mean(
    task: Task,
    members: Sequence[Member],
    part: slice,
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
) -> dict[str, float]:
    """Every member, equally weighted (the fold ensemble's method)."""
    return {m.trial_id: 1.0 for m in members}


def make_recipe(
    task: Task,
    members: Sequence[Member],
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    method: str = "greedy",
) -> tuple[Recipe, dict[str, float]]:
    """Per target, ``method``'s member weights on ``videos``, then the smoothing
    ``choose_smoothing`` picks for that target's combination (ties: none, then the narrower
    filter), and for AU each unit's threshold on the smoothed combination: (the recipe, each
    target's score with it)."""
    if method not in _METHODS:
        raise ValueError(f"unknown ensemble method {method!r}; known: {list_ensemble_methods()}")
    recipe, scores = Recipe(), {}
    for name, part in _targets(task).items():
        weights = _METHODS[method](task, members, part, videos, labels, valid)
        combined = _combine(members, weights, slice(None), "validation", videos, task, NO_SMOOTHING)
        smoothing, score, _ = choose_smoothing(
            task, combined, videos, labels, valid, key=TARGET_SCORE[name]
        )
        recipe.weights[name], recipe.smoothing[name] = weights, smoothing
        scores[name] = score
        if KIND[task] == "multilabel":
            smoothed = {v: smoothing.apply(task, combined[v]) for v in videos}
            thresholds, scores[name] = tuned_au_f1(smoothed, videos, labels, valid)
            recipe.thresholds = [float(x) for x in thresholds]
    return recipe, scores


def apply_recipe(
    task: Task, members: Sequence[Member], recipe: Recipe, split: str, videos: Sequence[str]
) -> dict[str, np.ndarray]:
    parts = [
        _combine(members, recipe.weights[name], part, split, videos, task, recipe.smoothing[name])
        for name, part in _targets(task).items()
    ]
    out = {v: np.concatenate([p[v] for p in parts], axis=1) for v in videos}
    if recipe.thresholds:
        out = {v: calibrate_thresholds(p, np.asarray(recipe.thresholds)) for v, p in out.items()}
    return out


def fit_recipe(
    task: Task,
    members: Sequence[Member],
    videos: Sequence[str],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    method: str = "greedy",
) -> Fit:
    """``make_recipe`` of ``members`` on ``videos`` (validation videos), with its scores and
    the best single member there."""
    if not members:
        raise ValueError("no trial finished with a checkpoint: nothing to ensemble")
    videos = tuple(videos)
    recipe, _ = make_recipe(task, members, videos, labels, valid, method)
    pred = apply_recipe(task, members, recipe, "validation", videos)
    singles = {m.trial_id: score_split(task, m.validation, videos, labels, valid) for m in members}
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
    method: str = "greedy",
) -> EnsembleResult:
    """Fit on the selection videos, estimate on the held-out ones (scored once, selecting
    nothing), refit on both for the submission."""
    selection = fit_recipe(task, members, selection_videos, labels, valid, method)
    holdout: dict[str, dict[str, float]] = {}
    if holdout_videos:
        held = list(holdout_videos)
        by_id = {m.trial_id: m for m in members}
        pred = apply_recipe(task, members, selection.recipe, "validation", held)
        holdout["ensemble"] = score_split(task, pred, held, labels, valid)
        best = by_id[selection.best_single[0]]
        holdout["best_single"] = score_split(task, best.validation, held, labels, valid)
    everything = [*selection_videos, *holdout_videos]
    refit = holdout_videos and KIND[task] != "multilabel"  # AU thresholds: the selection's
    submitted = fit_recipe(task, members, everything, labels, valid, method) if refit else selection
    return EnsembleResult(
        selection,
        holdout,
        submitted,
        apply_recipe(task, members, submitted.recipe, "validation", everything),
        apply_recipe(task, members, submitted.recipe, "test", list(test_videos)),
        tuple(holdout_videos),
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
        holdout_videos=ens.holdout_videos,
    )
