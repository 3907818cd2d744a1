"""A finished search's outputs: the submission file, the recipe of what was submitted
(``ensemble_recipe.json``), the plots, and the figures MLflow records. What is submitted is the
trial ensemble refit on every validation video, or with ``--folds`` the fold ensemble; the file
and the figures say which, and give its estimate (the held-out score of the recipe fitted on the
selection videos, or the out-of-fold score)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from abaw_ray import report
from abaw_ray.ensemble import EnsembleResult, Member
from abaw_ray.fsutil import atomic_write_text
from abaw_ray.metrics import majority_baseline
from abaw_ray.submission import decisions, write_submission
from abaw_ray.tasks import AU_NAMES, OFFICIAL_SCORE, PRIMARY_METRIC, Task
from abaw_ray.train.bank import FeatureBank
from abaw_ray.train.prepare import Prepared
from abaw_ray.tune.cost import TrialCost, best_by_hours, cost_summary, cost_unit
from abaw_ray.tune.folds import FoldResult, write_folds_json

SUBMISSION_FILE: dict[str, str] = {
    "va": "VA_submission.txt",
    "expr": "EXPR_submission.txt",
    "au": "AU_submission.txt",
}
RECIPE_FILE = "ensemble_recipe.json"  # what was submitted, and how it was fitted


def ensemble_summary(
    task: Task, ens: EnsembleResult, folds: FoldResult | None = None
) -> dict[str, float]:
    """The figures a search ends with, as MLflow metric names; ``submitted_estimate_<score>``
    is the estimate of what was submitted."""
    key = OFFICIAL_SCORE[task]
    summary = {
        f"selection_ensemble_{key}": ens.selection.score,
        f"selection_best_single_{key}": ens.selection.best_single[1][key],
    }
    if ens.refit:
        summary[f"trial_ensemble_all_val_{key}"] = ens.submitted.score
    # AU: each unit's decision threshold, chosen on the selection videos
    thresholds = ens.submitted.recipe.thresholds
    summary.update({f"threshold_{n}": t for n, t in zip(AU_NAMES, thresholds)})
    for who, scores in ens.holdout.items():
        summary.update({f"holdout_{who}_{k}": v for k, v in scores.items()})
    if folds is not None:
        summary.update(folds.summary())
        summary[f"submitted_estimate_{key}"] = folds.oof[key]
    elif ens.holdout:
        summary[f"submitted_estimate_{key}"] = ens.holdout["ensemble"][key]
    return summary


def search_summary(
    task: Task,
    ens: EnsembleResult,
    folds: FoldResult | None,
    costs: list[TrialCost],
    bank: FeatureBank,
) -> dict[str, float]:
    """Every figure MLflow records of a finished search: the ensemble's, the cost's and, for
    expressions, the majority-class floor on the validation videos."""
    summary = {**ensemble_summary(task, ens, folds), **cost_summary(costs)}
    if task == "expr":
        summary["majority_baseline_val_f1"] = majority_baseline(
            bank.labels,
            bank.valid,
            bank.splits["train"],
            [*bank.splits["selection"], *bank.splits["holdout"]],
        )
    return summary


def submitted_recipe(
    task: Task, ens: EnsembleResult, members: list[Member], folds: FoldResult | None
) -> dict:
    """What ``ensemble_recipe.json`` says was submitted, and how the trial ensemble was fitted."""
    trial_ensemble = {
        "recipe_refit_on_all_validation_videos": asdict(ens.submitted.recipe),
        "fitted_on": list(ens.submitted.videos),
        "selection_recipe": asdict(ens.selection.recipe),
        "selection_videos": list(ens.selection.videos),
        "holdout_videos": list(ens.holdout_videos),
        "members": {m.trial_id: m.description for m in members},
    }
    key = OFFICIAL_SCORE[task]
    if folds is None:
        submitted = {
            "kind": "trial ensemble",
            "recipe": asdict(ens.submitted.recipe),
            "estimate": {"held_out": ens.holdout.get("ensemble", {}).get(key)},
        }
    else:
        submitted = {
            "kind": "fold ensemble",
            "trial": folds.trial_id,
            "settings": folds.description,
            "folds": [list(f.videos) for f in folds.folds],
            "recipe": asdict(folds.recipe),
            "estimate": {"out_of_fold": folds.oof[key]},
        }
        trial_ensemble["not_submitted"] = "the fold ensemble replaced it"
    return {"submitted": submitted, "trial_ensemble": trial_ensemble}


def write_outputs(
    task: Task,
    out_dir: Path,
    prepared: Prepared,
    ens: EnsembleResult,
    members: list[Member],
    costs: list[TrialCost],
    folds: FoldResult | None = None,
) -> tuple[Path | None, list[Path]]:
    """The submission (under the search's own folder) of what is submitted (the fold
    ensemble's test predictions with ``folds``, else the trial ensemble's), its recipe, the
    plots and ``folds.json``: (the submission, every file written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: list[Path] = []
    submission = None
    template = prepared.corpus.templates.get(task)
    if template is not None:
        test: dict[str, np.ndarray] = ens.test if folds is None else folds.test
        test = {v: decisions(task, p) for v, p in test.items()}
        submission = write_submission(
            out_dir / SUBMISSION_FILE[task], template, test, prepared.bank.face_mask
        )
        artifacts.append(submission)
    recipe = out_dir / RECIPE_FILE
    content = {
        **submitted_recipe(task, ens, members, folds),
        "scores": ensemble_summary(task, ens, folds),
    }
    atomic_write_text(recipe, json.dumps(content, indent=1))
    artifacts.append(recipe)
    best = next(m for m in members if m.trial_id == ens.selection.best_single[0])
    artifacts += report.search_plots(task, out_dir, ens, best, prepared.bank)
    unit = cost_unit(costs)
    artifacts.append(
        report.plot_best_by_cost(
            out_dir / "best_by_cost.png",
            best_by_hours(costs, unit),
            [c.score for c in costs],
            unit,
            PRIMARY_METRIC[task],
        )
    )
    if folds is not None:
        artifacts.append(write_folds_json(out_dir / "folds.json", folds))
    return submission, artifacts
