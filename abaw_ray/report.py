"""What a search shows people: its printed tables and summary, and its plots (PNG, logged
to MLflow)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from abaw_ray.console import console_fd  # noqa: E402
from abaw_ray.metrics import ccc, confusion_matrix, flatten_split, score_split  # noqa: E402
from abaw_ray.tasks import (  # noqa: E402
    AU_NAMES,
    EXPR_CLASSES,
    OFFICIAL_SCORE,
    PRIMARY_METRIC,
    TRIAL_ERROR,
    VA_COLUMNS,
    Task,
)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_va_traces(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
    fps: dict[str, float],
) -> Path:
    videos = list(videos)[:3]
    fig, axes = plt.subplots(len(videos), 2, figsize=(12, 2.6 * len(videos)), squeeze=False)
    for row, v in enumerate(videos):
        t = np.arange(len(preds[v])) / fps.get(v, 30.0)
        for col, name in enumerate(VA_COLUMNS):
            ax = axes[row, col]
            truth = np.where(valid[v], labels[v][:, col], np.nan)
            ax.plot(t, truth, color="black", lw=1, label="label")
            ax.plot(t, preds[v][:, col], color="tab:red", lw=1, label="prediction")
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"{v} {name}", fontsize=9)
            if row == len(videos) - 1:
                ax.set_xlabel("seconds")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_per_video_ccc(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
) -> Path:
    videos = list(videos)
    scores = np.array(
        [[ccc(preds[v][valid[v], d], labels[v][valid[v], d]) for d in (0, 1)] for v in videos]
    )
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(videos)), 3.5))
    x = np.arange(len(videos))
    ax.bar(x - 0.2, scores[:, 0], 0.4, label="valence")
    ax.bar(x + 0.2, scores[:, 1], 0.4, label="arousal")
    ax.set_xticks(x, videos, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("CCC (per video)")
    ax.legend()
    return _save(fig, path)


def plot_best_by_cost(
    path: Path,
    curve: Sequence[tuple[float, float]],
    scores: Sequence[float],
    unit: str,
    metric: str,
) -> Path:
    """The best selection score against the hours the trials held (``curve`` from
    ``cost.best_by_hours``), each trial a dot at the hours spent when it ended."""
    hours = [h for h, _ in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.step(hours, [b for _, b in curve], where="post", label="best so far")
    ax.scatter(hours, scores, s=12, color="gray", label="trials")
    ax.set_xlabel(f"{unit.upper()}-hours spent by the trials")
    ax.set_ylabel(f"best {metric}")
    ax.legend()
    return _save(fig, path)


def _expr_flat(preds, labels, valid, videos):
    p, t = flatten_split(preds, videos, labels, valid)
    return p.argmax(-1), t


def format_confusion(pred: np.ndarray, target: np.ndarray) -> str:
    """The confusion matrix as text: one row per label, one column per predicted class."""
    cm = confusion_matrix(pred, target, len(EXPR_CLASSES))
    short = [c[:5] for c in EXPR_CLASSES]
    lines = [f"  {'':<10}" + "".join(f"{c:>7}" for c in short)]
    lines += [f"  {c:<10}" + "".join(f"{n:>7}" for n in row) for c, row in zip(EXPR_CLASSES, cm)]
    return "\n".join(lines)


def plot_confusion(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
    title: str = "",
) -> Path:
    p, t = _expr_flat(preds, labels, valid, videos)
    k = len(EXPR_CLASSES)
    cm = confusion_matrix(p, t, k).astype(float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), EXPR_CLASSES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), EXPR_CLASSES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(f"confusion (row-normalised) {title}")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_per_class_f1(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
    title: str = "",
    task: Task = "expr",
) -> Path:
    """Each expression class's F1 (EXPR) or each action unit's (AU, at the decisions the
    predictions carry: 0.5 after the recipe's thresholds)."""
    scores = score_split(task, preds, videos, labels, valid)
    names = AU_NAMES if task == "au" else EXPR_CLASSES
    keys = [f"f1_{n}" for n in AU_NAMES] if task == "au" else [f"f1_class{c}" for c in range(8)]
    f1 = np.array([scores[k] for k in keys])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(f1)), f1)
    ax.set_xticks(range(len(f1)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(f"per-{'unit' if task == 'au' else 'class'} F1 {title}")
    return _save(fig, path)


def print_trials(task: Task, outcomes: Sequence, shown: int = 10) -> None:
    """The trials ranked by their selection score (the validation videos they select on)."""
    metric = PRIMARY_METRIC[task]
    extra = VA_COLUMNS if task == "va" else ()
    print(
        f"\n{len(outcomes)} trials ({sum(o.best is not None for o in outcomes)} with a "
        f"checkpoint); top trials by {metric} on the selection videos:"
    )
    head = "".join(f"{h:>9}" for h in extra)
    pseudo = any("pseudo_labels" in o.config for o in outcomes)  # a search given pseudo-labels
    column = f"{'pseudo':<8}" if pseudo else ""
    # trials by number, as proposed: Tune's trial ids are random, a rerun's numbers are not
    print(f"  {'trial':<7}{metric:>9}{head}{'epoch':>6}  {column}{'model':<17}features")
    for o in outcomes[:shown]:
        if o.best is None:
            why = f"failed: {o.error}" if o.error else f"{o.status}, no checkpoint"
            print(f"  {f'#{o.number}':<7}{'-':>9}  ({why})")
            continue
        cols = "".join(f"{o.best[f'{metric}_{h}']:>9.3f}" for h in extra)
        used = f"{'yes' if o.config.get('pseudo_labels') else 'no':<8}" if pseudo else ""
        print(
            f"  {f'#{o.number}':<7}{o.best[metric]:>9.4f}{cols}{o.best['epoch']:>6}  {used}"
            f"{o.config.get('model', '?'):<17}{o.config.get('features', '?')}"
        )
    if pseudo:
        n = sum(bool(o.config.get("pseudo_labels")) for o in outcomes)
        best = outcomes[0].config.get("pseudo_labels") if outcomes else False
        print(
            f"  pseudo-labels: {n} of {len(outcomes)} trials trained on them; the best "
            + ("did" if best else "did not (--control measures them only when it does)")
        )


def _scores(task: Task, scores: dict[str, float]) -> str:
    key = OFFICIAL_SCORE[task]
    if task == "va":
        v, a = scores[f"{key}_valence"], scores[f"{key}_arousal"]
        return f"{scores[key]:.4f} (valence {v:.4f}, arousal {a:.4f})"
    return f"{scores[key]:.4f}"


def trial_names(outcomes: Sequence) -> dict[str, str]:
    """Each trial's id -> ``#N``, its number in the trials table (the same in a rerun)."""
    return {o.trial_id: f"#{o.number}" for o in outcomes if o.number}


def print_summary(
    task, ens, members, bank, summary, submission, control_of=None, folds=None, names=None
) -> None:
    """The end of a search: selection and held-out scores of the best single trial and the
    ensemble; what was submitted (the trial ensemble refit on every validation video, or
    with ``folds`` the fold ensemble, announced before the file); baselines; the controls;
    the submission file, last. ``names``: trial id -> its name in the table (``#N``)."""
    names = names or {}
    key = OFFICIAL_SCORE[task]
    metric = PRIMARY_METRIC[task]
    sel, n_sel, n_held = ens.selection, len(bank.splits["selection"]), len(bank.splits["holdout"])
    best_id = sel.best_single[0]
    used = ens.selection.recipe.used_trials()
    selection, held_out = f"selection ({count_of(n_sel)})", f"held out ({count_of(n_held)})"
    print(f"\n{'':<34}{selection:>26}{held_out:>26}")
    held = ens.holdout
    ensemble = f"ensemble of {len(used)} trial{'s' * (len(used) != 1)}" + (
        f" (of {len(members)} offered)" if len(used) != len(members) else ""
    )
    for label, chosen, hkey in (
        (f"best single trial {names.get(best_id, best_id)}", sel.best_single[1], "best_single"),
        (ensemble, sel.scores, "ensemble"),
    ):
        h = f"{held[hkey][key]:.4f}" if held else "-"
        print(f"  {label:<32}{chosen[key]:>26.4f}{h:>26}")
    print(f"  its members and weights: {recipe_text(ens.selection.recipe, names)}")
    if held:
        print(
            f"  held-out videos: {', '.join(bank.splits['holdout'])} (nothing was selected on "
            f"them: not the best epochs, the search, the members, weights or smoothing)"
        )
    else:
        print("  no held-out videos (--holdout 0): the selection scores are optimistic")
    refit = (
        f"the same recipe refit on all {len(ens.submitted.videos)} validation videos: val "
        f"{key} {_scores(task, ens.submitted.scores)} (optimistic: fit there)"
    )
    if ens.submitted.recipe != ens.selection.recipe:
        refit += f"; members and weights {recipe_text(ens.submitted.recipe, names)}"
    if not ens.refit:
        refit = "as fitted on the selection videos" + (
            " (AU: its thresholds are chosen there, never on the held-out videos)"
            if task == "au" and held
            else ""
        )
    if folds is None:
        print(f"submitted: the trial ensemble, {refit}")
    else:
        print(f"the trial ensemble, {refit}; not submitted: the fold ensemble below is")
    if task == "expr":
        print(
            "majority-class baseline (all validation videos): f1 "
            f"{summary['majority_baseline_val_f1']:.4f}"
        )
        videos = list(ens.submitted.videos)
        best = next(m for m in members if m.trial_id == best_id)
        for name, preds in (
            ("ensemble", ens.validation),
            (f"best trial {names.get(best_id, best_id)}", best.validation),
        ):
            s = score_split(task, preds, videos, bank.labels, bank.valid)
            print(
                f"per-class F1, {name}, all validation videos: "
                + ", ".join(f"{c} {s[f'f1_class{i}']:.3f}" for i, c in enumerate(EXPR_CLASSES))
            )
        print("confusion matrix of the ensemble, all validation videos (rows: label):")
        print(format_confusion(*_expr_flat(ens.validation, bank.labels, bank.valid, videos)))
    if task == "au":
        print_au_units(ens, bank)
    if control_of is not None:
        pseudo = bool(control_of.config.get("pseudo_labels"))
        controlled = names.get(control_of.trial_id, control_of.trial_id)
        print(
            f"shifted-label control (trial {controlled}'s settings, labels and masks "
            f"shifted within each training video"
            + (", its pseudo-labels with their confidences too" if pseudo else "")
            + f"): {metric} {summary[f'control_{metric}']:.4f} "
            f"vs {control_of.best[metric]:.4f} on the same selection videos"
        )
        if f"no_pseudo_{metric}" in summary:
            print(
                f"pseudo-labels: trial {controlled}'s settings {metric} "
                f"{control_of.best[metric]:.4f} with them, {summary[f'no_pseudo_{metric}']:.4f} "
                f"without, {summary[f'pseudo_shifted_{metric}']:.4f} with them shifted within "
                f"each video (their control), on the same selection videos"
            )


def print_au_units(ens, bank) -> None:
    """Each action unit's threshold (chosen on the selection videos) and the ensemble's F1
    with it on the selection and held-out videos."""
    splits = {"selection": list(ens.selection.videos), "held out": list(ens.holdout_videos)}
    scores = {
        name: score_split("au", ens.validation, videos, bank.labels, bank.valid)
        for name, videos in splits.items()
        if videos
    }
    thresholds = ens.submitted.recipe.thresholds
    print("per-AU threshold (chosen on the selection videos) and the ensemble's F1:")
    print(f"  {'':<10}" + "".join(f"{n:>7}" for n in AU_NAMES))
    print(f"  {'threshold':<10}" + "".join(f"{t:>7.2f}" for t in thresholds))
    for name, s in scores.items():
        print(f"  {name:<10}" + "".join(f"{s[f'f1_{n}']:>7.3f}" for n in AU_NAMES))


def print_pseudo_labels(summary: dict[str, float], path: Path) -> None:
    """Where a search's pseudo-labels went, how many frames, and how a search uses them."""
    print(
        f"pseudo-labels: {summary['pseudo_frames']} unlabelled frames of training and "
        f"test videos, mean confidence {summary['pseudo_confidence']:.3f} -> "
        f"{path}; a search trains on them with --pseudo-labels {path.parent}"
    )


def print_submission(submission) -> None:
    print(
        f"submission: {submission or '- (the corpus has no test template)'}"
        + (" (validated)" if submission else "")
    )


def count_of(n: int, what: str = "video") -> str:
    """``1 video``, ``2 videos``."""
    return f"{n} {what}{'s' * (n != 1)}"


def recipe_text(recipe, names: dict[str, str] | None = None) -> str:
    """``valence: #2 x2, #5 x1, box(15); arousal: ...``: each target's members (``names`` of
    their trial ids, else the ids) with their weights, and its smoothing."""
    names = names or {}
    parts = []
    for target, weights in recipe.weights.items():
        ranked = sorted(weights.items(), key=lambda x: -x[1])
        members = ", ".join(f"{names.get(t, t)} x{w:g}" for t, w in ranked)
        parts.append(f"{target}: {members}, {recipe.smoothing[target]}")
    return "; ".join(parts)


def search_plots(task, out_dir: Path, ens, best, bank) -> list[Path]:
    """The search's figures: VA traces and per-video CCC, or EXPR confusion matrices and
    per-class F1."""
    videos = [*ens.selection.videos, *ens.holdout_videos]
    if task == "au":
        return [
            plot_per_class_f1(
                out_dir / f"per_au_f1_{name}.png",
                preds,
                bank.labels,
                bank.valid,
                videos,
                title=name,
                task="au",
            )
            for name, preds in (("ensemble", ens.validation), ("best_trial", best.validation))
        ]
    if task == "va":
        paths = [
            plot_va_traces(
                out_dir / "val_traces.png",
                ens.validation,
                bank.labels,
                bank.valid,
                videos,
                bank.fps,
            ),
            plot_per_video_ccc(
                out_dir / "per_video_ccc.png", ens.validation, bank.labels, bank.valid, videos
            ),
        ]
    else:
        paths = []
        for name, preds in (("ensemble", ens.validation), ("best_trial", best.validation)):
            paths.append(
                plot_confusion(
                    out_dir / f"confusion_{name}.png",
                    preds,
                    bank.labels,
                    bank.valid,
                    videos,
                    title=name,
                )
            )
            paths.append(
                plot_per_class_f1(
                    out_dir / f"per_class_f1_{name}.png",
                    preds,
                    bank.labels,
                    bank.valid,
                    videos,
                    title=name,
                )
            )
    return paths


def print_cost(costs: Sequence, summary: dict[str, float], metric: str) -> None:
    """The search's cost, last: what its trials held times how long they held it."""
    unit = "gpu" if "cost_gpu_hours_to_best" in summary else "cpu"  # as cost_summary chose
    each = costs[0] if costs else None
    held = f"{each.cpus:g} CPU, {each.gpus:g} GPU each" if each else "no trial"
    best = max((c.score for c in costs), default=float("-inf"))
    print(
        f"cost: {len(costs)} trials ({held}) held {summary['cost_cpu_hours']:.3f} CPU-hours "
        f"and {summary['cost_gpu_hours']:.3f} GPU-hours; best {metric} {best:.4f} after "
        f"{summary[f'cost_{unit}_hours_to_best']:.3f} {unit.upper()}-hours"
    )


def trial_progress(
    metric: str, total: int, folder_name: Callable[[str], tuple[str, int]] | None = None
) -> Any:
    """A Tune callback writing one line per finished trial to the job's console (the
    descriptor ``CONSOLE_FD_ENV`` names, so that a resumed search's unpickled callback writes
    to this process's console): how many have ended, the trial's ``#N`` (its number in the
    trials table, read by ``folder_name`` from its folder; else its id), settings, best
    selection score and its epoch, and whether it was stopped early or failed, with its
    error's last lines."""
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.best: dict[str, tuple[float, int]] = {}  # trial id -> (best score, its epoch)
            self.last_epoch: dict[str, int] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            epoch = int(result.get("epoch", iteration))
            self.last_epoch[trial.trial_id] = epoch
            score = result.get(metric)
            if score is not None and score > self.best.get(trial.trial_id, (-np.inf, 0))[0]:
                self.best[trial.trial_id] = (float(score), epoch)

        def line(self, trials: list, trial: Any, outcome: str) -> None:
            finished = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
            done = len(finished | {trial.trial_id})  # a resumed search counts earlier ones
            cfg = trial.config
            number = folder_name(trial.path or "")[1] if folder_name else 0
            name = f"#{number}" if number else trial.trial_id
            error = (trial.last_result or {}).get(TRIAL_ERROR)
            if error:
                line = f"trial {done}/{total} {name} failed: {error}"
            else:
                score, epoch = self.best.get(trial.trial_id, (np.nan, 0))
                ran = self.last_epoch.get(trial.trial_id, 0)
                if outcome == "done" and ran < int(cfg.get("epochs", ran)):
                    outcome = f"ended after epoch {ran} of {cfg['epochs']}: ASHA or patience"
                line = (
                    f"trial {done}/{total} {name} {cfg.get('model')} "
                    f"{cfg.get('features')}: best {metric} {score:.4f} at epoch {epoch}"
                    + ("" if outcome == "done" else f" ({outcome})")
                )
            os.write(console_fd(), (line + "\n").encode())

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.line(trials, trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.line(trials, trial, "failed: its node or worker was lost; see the log")

    return TrialProgress()
