"""K-fold cross-validation of a search's best trial (``--folds K``).

The official split trains on the training videos and selects on the validation videos. With
``--folds K`` a search, once its trials and their ensemble are done, also trains the best
trial's settings K times over the training + validation videos pooled: whole videos in each
fold (the ``_left``/``_right`` pair of one raw video always together), each fold model trained
on the other folds and scored (its best epoch chosen) on its own fold. It reports each fold's
official score, their mean, and the out-of-fold score: every fold's predictions of its own
videos scored together, the official global way, over all pooled videos. The submission then
comes from the fold ensemble: the mean of the K fold models' test predictions (EXPR: class
probabilities): the ``mean`` ensemble method over the fold models, each target smoothed by the
filter ``choose_smoothing`` picks on the out-of-fold predictions.

Each fold is one ``TorchTrainer`` (``build_trainer``) stored under the search's own folder,
``<experiment>/folds/``, so that it is never taken for a search; the folds run concurrently, as
many at once as the cluster fits, each started from a Ray task (the driver only waits).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray

from abaw_ray.affwild2 import raw_video
from abaw_ray.ensemble import Member, Recipe, apply_recipe, make_recipe
from abaw_ray.fsutil import atomic_write_text, run_stamp
from abaw_ray.metrics import score_split
from abaw_ray.smoothing import NO_SMOOTHING
from abaw_ray.tasks import OFFICIAL_SCORE, Task
from abaw_ray.train.bank import FeatureBank
from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.prepare import Prepared
from abaw_ray.train.trainer import fit_in_task
from abaw_ray.tune.search import SearchConfig, trials_at_once, trials_fitting

FOLDS_DIR = "folds"  # inside the search's folder, like the controls: never taken for a search
POOLED_SPLITS = ("train", "selection", "holdout")  # the labelled videos the folds are drawn from


def pooled_videos(bank: FeatureBank) -> tuple[str, ...]:
    """The labelled videos folds are drawn from: training, selection and held-out validation."""
    return tuple(v for s in POOLED_SPLITS for v in bank.splits[s])


def assign_folds(
    videos: Mapping[str, int],
    k: int,
    seed: int = 0,
    group_of: Callable[[str], str] = raw_video,
) -> list[tuple[str, ...]]:
    """Whole videos in ``k`` folds: ``videos`` maps each video to its size in frames; videos of
    one group (``group_of``: the raw video, by default) go to one fold. Groups are placed
    largest first, each into the fold lightest so far (ties: the fold with fewer groups, then
    the lower index), which balances the folds' frame counts. Groups of equal size are taken
    in an order drawn from ``seed``; nothing depends on the order ``videos`` is given in.
    Each fold is sorted by name. Raises ValueError unless 2 <= k <= the number of groups."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    groups: dict[str, list[str]] = {}
    for v in sorted(videos):
        groups.setdefault(group_of(v), []).append(v)
    if k > len(groups):
        raise ValueError(
            f"{k} folds of {len(videos)} videos in {len(groups)} groups (a raw video's "
            f"_left/_right pair is one group, kept in one fold): use at most {len(groups)} folds"
        )
    names = sorted(groups)
    size = {g: sum(int(videos[v]) for v in groups[g]) for g in names}
    draw = np.random.default_rng(seed).permutation(len(names))
    order = sorted(range(len(names)), key=lambda i: (-size[names[i]], draw[i]))
    loads, members = [0] * k, [[] for _ in range(k)]
    for i in order:
        j = min(range(k), key=lambda f: (loads[f], len(members[f]), f))
        loads[j] += size[names[i]]
        members[j].extend(groups[names[i]])
    return [tuple(sorted(m)) for m in members]


def fold_bank(bank: FeatureBank, fold_videos: Sequence[str]) -> FeatureBank:
    """The bank a fold model trains with: ``train`` = every other pooled video (training,
    selection and held-out validation), ``val`` = this fold (its best epoch is chosen there),
    no held-out videos, the bank's test videos. The shards, labels and masks are the bank's
    own (they hold every video); so are the normalisation statistics, computed over the
    official training videos only: they are a fixed per-dimension normalisation, not something
    fitted on a fold, so a fold's validation videos that were official training videos only
    shift the feature scaling, never a label."""
    pool = pooled_videos(bank)
    held = tuple(fold_videos)
    unknown = sorted(set(held) - set(pool))
    if unknown:
        raise ValueError(f"fold videos {unknown} are not training or validation videos")
    if not held or set(held) == set(pool):
        raise ValueError("a fold must hold some, not all, of the training and validation videos")
    splits = {
        "train": tuple(v for v in pool if v not in set(held)),
        "selection": held,
        "holdout": (),
        "test": bank.splits["test"],
    }
    return replace(bank, splits=splits)


@dataclass
class Fold:
    """One fold model: the videos it was scored on and their annotated frames, its official
    scores there (the out-of-fold predictions of its best epoch), that epoch (1-based), and its
    test predictions."""

    videos: tuple[str, ...]
    frames: int
    scores: dict[str, float]
    epoch: int
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


@dataclass
class FoldResult:
    task: Task
    folds: list[Fold]
    mean: dict[str, float]  # each score's mean over the folds
    oof: dict[str, float]  # every fold's out-of-fold predictions scored at once
    recipe: Recipe  # the folds' mean, smoothed as chosen on the out-of-fold predictions
    oof_smoothed: dict[str, float]  # the out-of-fold score with it (optimistic: chosen there)
    test: dict[str, np.ndarray]  # the submission's: the folds' mean test predictions, smoothed
    trial_id: str = ""
    description: str = ""

    @property
    def videos(self) -> tuple[str, ...]:
        return tuple(v for f in self.folds for v in f.videos)

    def summary(self) -> dict[str, float]:
        """MLflow metrics: ``fold<i>_<score>`` (1-based), ``fold<i>_best_epoch``,
        ``folds_mean_<score>``, ``folds_oof_<score>``, ``folds_oof_smoothed_<score>``."""
        out: dict[str, float] = {}
        for i, f in enumerate(self.folds, 1):
            out.update({f"fold{i}_{k}": v for k, v in f.scores.items()})
            out[f"fold{i}_best_epoch"] = float(f.epoch)
        out.update({f"folds_mean_{k}": v for k, v in self.mean.items()})
        out.update({f"folds_oof_{k}": v for k, v in self.oof.items()})
        out.update({f"folds_oof_smoothed_{k}": v for k, v in self.oof_smoothed.items()})
        return out


def combine_folds(
    task: Task,
    fold_videos: Sequence[Sequence[str]],
    val: Sequence[Mapping[str, np.ndarray]],
    test: Sequence[Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
    epochs: Sequence[int] | None = None,
) -> FoldResult:
    """The folds' scores from their models' predictions: ``val[i]`` holds fold ``i``'s
    predictions of its own videos ``fold_videos[i]``, ``test[i]`` its test predictions. Each
    fold is scored on its videos, then all out-of-fold predictions together over every
    video (the official global score); the test predictions are averaged over the folds
    (VA: values, EXPR and AU: probabilities) and smoothed by the filter chosen on the
    out-of-fold predictions (AU: then decided at each unit's threshold chosen there)."""
    if not fold_videos or not (len(fold_videos) == len(val) == len(test)):
        raise ValueError("one list of videos, validation and test predictions per fold")
    folds = []
    for i, videos in enumerate(fold_videos):
        videos = tuple(videos)
        scores = score_split(task, val[i], videos, labels, valid)
        epoch = int(epochs[i]) if epochs is not None else 0
        frames = sum(int(np.count_nonzero(valid[v])) for v in videos)
        folds.append(Fold(videos, frames, scores, epoch, dict(val[i]), dict(test[i])))
    every = [v for f in folds for v in f.videos]
    if len(set(every)) != len(every):
        raise ValueError("a video is in more than one fold")
    test_videos = sorted(set(test[0]))
    if any(set(t) != set(test_videos) for t in test):
        raise ValueError("the fold models predicted different test videos")
    # The fold ensemble is the mean ensemble of the fold models: on a pooled video, the one
    # model that predicted it (its out-of-fold prediction); on a test video, their mean.
    models = [Member(f"fold{i + 1}", f.val, f.test) for i, f in enumerate(folds)]
    recipe, _ = make_recipe(task, models, every, labels, valid, method="mean")
    plain = Recipe(recipe.weights, {name: NO_SMOOTHING for name in recipe.smoothing})
    oof = apply_recipe(task, models, plain, "validation", every)
    mean = {key: float(np.mean([f.scores[key] for f in folds])) for key in folds[0].scores}
    return FoldResult(
        task,
        folds,
        mean,
        score_split(task, oof, every, labels, valid),
        recipe,
        score_split(
            task, apply_recipe(task, models, recipe, "validation", every), every, labels, valid
        ),
        apply_recipe(task, models, recipe, "test", test_videos),
    )


def run_folds(
    trial: TrialConfig,
    prepared: Prepared,
    cfg: SearchConfig,
    k: int,
    seed: int,
    trial_id: str = "best",
    log: Callable[[str], None] = print,
) -> FoldResult:
    """Trains ``trial``'s settings once per fold of the pooled training and validation videos
    (``assign_folds`` by annotated frames, seeded by ``seed``), as many folds at once as the
    cluster fits (``--concurrency`` caps it), each a TorchTrainer in
    ``<experiment>/folds/fold<i>-<trial_id>-<time>``; reads each fold's best checkpoint
    (``load_predictions``) and combines them (``combine_folds``). ``log``: a line as each
    fold finishes. Raises RuntimeError naming the fold that failed."""
    bank = prepared.bank
    annotated = {v: int(np.count_nonzero(bank.valid[v])) for v in pooled_videos(bank)}
    fold_videos = assign_folds(annotated, k, seed)
    storage = f"{cfg.experiment_uri()}/{FOLDS_DIR}"
    stamp = run_stamp()
    settings = cfg.trial_resources()
    at_once = trials_at_once(cfg, trials_fitting(ray.nodes(), cfg))
    names = [f"fold{i}-{trial_id}-{stamp}" for i in range(1, k + 1)]
    data = [ray.put(fold_bank(bank, videos)) for videos in fold_videos]
    # Pseudo-labels were made by models that saw every fold's labels: folds train without.
    config = asdict(replace(trial, pseudo_labels=False, shift_pseudo_labels=False))
    log(
        f"cross-validation: training trial {trial_id}'s settings on {k} folds of the "
        f"training and validation videos, {min(at_once, k)} at a time"
    )
    pending: dict[Any, int] = {}
    found: dict[int, tuple[Any, dict[str, Any]]] = {}
    started = time.time()
    queue = list(range(k))
    while queue or pending:
        while queue and len(pending) < at_once:
            i = queue.pop(0)
            pending[
                fit_in_task.options(num_cpus=cfg.driver_cpus).remote(
                    config, [data[i]], storage, names[i], **settings
                )
            ] = i
        (done,), _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done)
        try:
            out = ray.get(done)
        except ray.exceptions.RayError as err:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise RuntimeError(f"fold {i + 1} of {k} failed ({storage}/{names[i]}): {err}") from err
        if out is None:
            raise RuntimeError(f"fold {i + 1} of {k} finished no epoch ({storage}/{names[i]})")
        found[i] = out
        log(
            f"fold {i + 1}/{k} trained: {len(fold_videos[i])} video"
            f"{'s' * (len(fold_videos[i]) != 1)}, best epoch "
            f"{int(out[1]['epoch'])} ({time.time() - started:.0f} s)"
        )
    val, test, epochs = [], [], []
    for i in range(k):
        checkpoint, metrics = found[i]
        with checkpoint.as_directory() as d:
            preds = load_predictions(d)
        val.append(preds["selection"])
        test.append(preds["test"])
        epochs.append(int(metrics["epoch"]))
    result = combine_folds(trial.task, fold_videos, val, test, bank.labels, bank.valid, epochs)
    result.trial_id = trial_id
    result.description = f"{trial.model} {trial.features}"
    return result


def _scores_text(task: Task, scores: Mapping[str, float]) -> str:
    key = OFFICIAL_SCORE[task]
    if task == "va":
        return (
            f"{key} {scores[key]:.4f} (valence {scores[f'{key}_valence']:.4f}, "
            f"arousal {scores[f'{key}_arousal']:.4f})"
        )
    return f"{key} {scores[key]:.4f}"


def print_folds(result: FoldResult) -> None:
    """The cross-validation's lines: one per fold, their mean, the out-of-fold score, the
    smoothing chosen on it, and where the submission came from."""
    task, k = result.task, len(result.folds)
    print(
        f"\n{k}-fold cross-validation of trial {result.trial_id}'s settings "
        f"({result.description}) over the {len(result.videos)} training and validation videos "
        f"(whole videos; a raw video's _left/_right pair in one fold):"
    )
    for i, f in enumerate(result.folds, 1):
        print(
            f"  fold {i}: {_scores_text(task, f.scores)}, best epoch {f.epoch}; "
            f"{len(f.videos)} video{'s' * (len(f.videos) != 1)}, {f.frames} annotated frames: "
            f"{', '.join(f.videos)}"
        )
    print(f"  mean over the {k} folds: {_scores_text(task, result.mean)}")
    print(
        f"  out-of-fold: {_scores_text(task, result.oof)} over all {len(result.videos)} videos "
        f"at once (each fold's best epoch was chosen on that fold, and the settings on the "
        f"validation videos: mildly optimistic, like a selection score)"
    )
    smoothing = ", ".join(f"{k} {v}" for k, v in result.recipe.smoothing_names().items())
    print(
        f"  smoothing {smoothing}"
        + (", and each unit's threshold" if result.recipe.thresholds else "")
        + ", chosen on the out-of-fold predictions: "
        f"{_scores_text(task, result.oof_smoothed)} (optimistic: chosen there)"
    )
    print(
        f"submitted: the fold ensemble, the mean of the {k} fold models' test predictions"
        f"{' (class probabilities)' if task == 'expr' else ''}, smoothed ({smoothing}); "
        f"its estimate: the out-of-fold {_scores_text(task, result.oof)}"
    )


def write_folds_json(path: Path, result: FoldResult) -> Path:
    """The folds' videos, best epochs and scores, the smoothing and the summary scores."""
    atomic_write_text(
        path,
        json.dumps(
            {
                "trial_id": result.trial_id,
                "settings": result.description,
                "folds": [
                    {
                        "videos": list(f.videos),
                        "annotated_frames": f.frames,
                        "best_epoch": f.epoch,
                        "scores": f.scores,
                    }
                    for f in result.folds
                ],
                "mean": result.mean,
                "out_of_fold": result.oof,
                "smoothing": {
                    target: {"kind": s.kind, "width": s.width}
                    for target, s in result.recipe.smoothing.items()
                },
                "out_of_fold_smoothed": result.oof_smoothed,
            },
            indent=1,
        ),
    )
    return path


def fold_count(text: str) -> int:
    """``--folds``: a whole number >= 0 (0 and 1: the official split)."""
    k = int(text)
    if k < 0:
        raise argparse.ArgumentTypeError(f"0 (the official split) or at least 2, not {k}")
    return k


def folds_problem(bank: FeatureBank, k: int, seed: int) -> str | None:
    """Why ``k`` folds cannot be drawn from the bank's training and validation videos (None
    when they can, or when ``k`` < 2: no cross-validation)."""
    if k < 2:
        return None
    try:
        assign_folds({v: bank.num_frames[v] for v in pooled_videos(bank)}, k, seed)
    except ValueError as err:
        return f"--folds {k}: {err}"
    return None
