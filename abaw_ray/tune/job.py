"""The search recipe behind ``jobs/search_va.py`` and ``jobs/search_expr.py``; the task comes
from the search space's YAML.

space -> prepare (corpus, features, bank) -> search (Ray Tune over Ray Train trials) ->
ensemble (fit on the selection videos, estimate on the held-out ones, refit on all) ->
outputs (submission, recipe, plots, MLflow) -> summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import ray

from abaw_ray import report, tracking
from abaw_ray.cluster import (
    Console,
    Interrupted,
    add_ray_flags,
    check_output_dir,
    interruptible_job,
    job_on_ray,
    name_refusal,
    starts_local_instance,
    stoppable_search,
)
from abaw_ray.data.corpus import preflight
from abaw_ray.ensemble import EnsembleResult, Member, build_ensemble, ensemble_pseudo_labels
from abaw_ray.errors import CorpusNotFoundError
from abaw_ray.fsutil import atomic_write_text
from abaw_ray.metrics import score_split
from abaw_ray.pause import pause_point
from abaw_ray.pseudo import PSEUDO_FILE, PseudoLabels
from abaw_ray.submission import write_submission
from abaw_ray.tasks import NUM_EXPR_CLASSES, OFFICIAL_SCORE, PRIMARY_METRIC, Task
from abaw_ray.train.data import FeatureBank
from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.prepare import Prepared, prepare
from abaw_ray.tune.controls import control_runs, train_control
from abaw_ray.tune.cost import TrialCost, best_by_hours, cost_summary, cost_unit, trial_costs
from abaw_ray.tune.folds import (
    FoldResult,
    fold_count,
    folds_problem,
    print_folds,
    run_folds,
    write_folds_json,
)
from abaw_ray.tune.search import (
    SearchConfig,
    TrialOutcome,
    build_tuner,
    can_resume,
    collect_outcomes,
    latest_search,
    search_name,
)
from abaw_ray.tune.space import SearchSpace, load_search_space

REPO = Path(__file__).resolve().parents[2]
SUBMISSION_FILE: dict[str, str] = {"va": "VA_submission.txt", "expr": "EXPR_submission.txt"}

# SearchConfig fields a flag overrides: flag -> (field, type, help)
CONFIG_FLAGS = {
    "--num-samples": ("num_samples", int, "trials to run"),
    "--searcher": ("searcher", str, "tpe (Optuna TPE) or random"),
    "--scheduler": ("scheduler", str, "asha (stop weak trials early) or none"),
    "--concurrency": (
        "max_concurrent",
        int,
        "trials at once at most (None: what the cluster holds as it grows, plus a few waiting "
        "for the autoscaler)",
    ),
    "--workers-per-trial": ("workers_per_trial", int, "data-parallel Ray Train workers"),
    "--gpus-per-trial": ("gpus_per_trial", float, "GPUs per trial; 0.25 packs four on a GPU"),
    "--cpus-per-worker": ("cpus_per_worker", float, "CPUs per Ray Train worker"),
    "--time-budget": ("time_budget_s", float, "seconds after which no new trial starts"),
    "--top-k": ("top_k", int, "best trials offered to the ensemble"),
    "--holdout": (
        "holdout",
        float,
        "validation videos that nothing selects on, scored once at the end: a fraction "
        "(0.33), a number of videos (2), or 0 for none",
    ),
    "--seed": ("seed", int, "seed of the searcher, the held-out draw and the trials"),
}


def search_parser(task: Task, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="Aff-Wild2 root (default: the embedded corpus)")
    p.add_argument(
        "--realistic",
        action="store_true",
        help="without --data: the realistic embedded corpus (python -m abaw_ray.data synth "
        "--realistic) and its space, search_spaces/realistic_TASK.yaml (default: off)",
    )
    p.add_argument(
        "--output", type=Path, default=Path("outputs"), help="results folder (default: outputs)"
    )
    p.add_argument(
        "--space",
        type=Path,
        help=f"search space YAML; its task decides the job (default: search_spaces/{task}.yaml, "
        f"the paper's features, with --data; search_spaces/embedded_{task}.yaml without)",
    )
    p.set_defaults(task=task)
    p.add_argument(
        "--tiny", action="store_true", help="tiny random extractors on any corpus (default: off)"
    )
    defaults = {f.name: f.default for f in fields(SearchConfig)}
    for flag, (name, kind, text) in CONFIG_FLAGS.items():
        default = defaults[name]
        shown = f"{default:.3g}" if isinstance(default, float) else default
        p.add_argument(flag, type=kind, help=f"{text} (default: {shown})")
    p.add_argument("--storage", help="Tune/Train storage path or URI (default: OUTPUT/ray_results)")
    p.add_argument(
        "--name",
        help=f"search name (default: search_{task}-<start time>; with --resume the latest "
        f"search_{task}-* under the storage)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted search (default: off)"
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="also train the best trial's settings on labels shifted within each video, "
        "masks with them (a control; default: off)",
    )
    p.add_argument(
        "--folds",
        type=fold_count,
        default=0,
        metavar="K",
        help="after the search, train the best trial's settings K times, K-fold "
        "cross-validation over the training + validation videos (whole videos, a _left/_right "
        "pair in one fold); print each fold's score and the out-of-fold score, and submit the "
        "mean of the K fold models' test predictions instead of the trial ensemble's "
        "(default: 0, the official split only)",
    )
    p.add_argument(
        "--make-pseudo-labels",
        action="store_true",
        help=f"trials also predict the training videos' unlabelled frames, and the ensemble "
        f"labels those and the test videos, each frame with a confidence: "
        f"OUTPUT/<search>/{PSEUDO_FILE} (default: off)",
    )
    p.add_argument(
        "--pseudo-labels",
        type=Path,
        metavar="SEARCH_DIR",
        help="an earlier search's folder (or its pseudo_labels.npz): trials may train on its "
        "pseudo-labels, weighted by confidence; whether they do is searched (pseudo_labels: "
        "[false, true] unless the space sets it). With --control, the best trial's settings "
        "are also trained without them and on them shifted within each video (default: none)",
    )
    p.add_argument("--store", type=Path, help="feature store (default: OUTPUT/features)")
    p.add_argument("--weights-dir", type=Path, help="local pre-trained weights (default: HF cache)")
    add_ray_flags(p)
    return p


def default_space(task: Task, embedded: bool, realistic: bool = False) -> Path:
    """The shipped space: the paper's pre-trained features for a real corpus, the model-free
    and tiny features that carry signal on an embedded one."""
    if not embedded:
        return REPO / "search_spaces" / f"{task}.yaml"
    return REPO / "search_spaces" / f"{'realistic' if realistic else 'embedded'}_{task}.yaml"


def search_config(args: argparse.Namespace, space: SearchSpace, storage: str) -> SearchConfig:
    """The search's settings: SearchConfig's defaults, overridden by the flags given."""
    flags = {
        name: getattr(args, flag[2:].replace("-", "_")) for flag, (name, *_) in CONFIG_FLAGS.items()
    }
    given = {name: value for name, value in flags.items() if value is not None}
    local = starts_local_instance(args.address)
    return SearchConfig(
        space=space, storage_path=storage, name=args.name, local_instance=local, **given
    )


def load_members(outcomes: list[TrialOutcome], top_k: int) -> list[Member]:
    """The ``top_k`` trials by selection score, with their checkpoints' predictions."""
    members = []
    for o in [o for o in outcomes if o.checkpoint][:top_k]:
        with ray.train.Checkpoint(o.checkpoint).as_directory() as d:
            preds = load_predictions(d)
        members.append(
            Member(
                o.trial_id,
                {**preds["val"], **preds["holdout"]},
                preds["test"],
                f"{o.config.get('model')} {o.config.get('features')}",
                preds["unlabelled"],
            )
        )
    return members


def majority_baseline(bank: FeatureBank) -> float:
    """EXPR: macro F1 on every validation video of always predicting the most frequent
    training class."""
    train = np.concatenate([bank.labels[v][bank.valid[v]] for v in bank.splits["train"]])
    majority = np.bincount(train, minlength=NUM_EXPR_CLASSES).argmax()
    videos = [*bank.splits["val"], *bank.splits["holdout"]]
    preds = {v: np.eye(NUM_EXPR_CLASSES)[np.full(bank.num_frames[v], majority)] for v in videos}
    return score_split("expr", preds, videos, bank.labels, bank.valid)["f1"]


def pseudo_problem(pseudo: PseudoLabels, bank: FeatureBank, source: Path) -> str | None:
    """Why these pseudo-labels cannot train on this bank (None when they can)."""
    unknown = sorted(set(pseudo.values) - set(bank.num_frames))
    if unknown:
        return (
            f"{source}: pseudo-labels of videos this corpus does not have for task {bank.task} "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})"
        )
    wrong = [v for v, c in pseudo.confidence.items() if len(c) != bank.num_frames[v]]
    if wrong:
        v = wrong[0]
        return (
            f"{source}: video {v} has {len(pseudo.confidence[v])} pseudo-labelled frames, the "
            f"corpus {bank.num_frames[v]}"
        )
    return None


def ensemble_summary(task: Task, ens: EnsembleResult) -> dict[str, float]:
    """The figures a search ends with, as MLflow metric names."""
    key = OFFICIAL_SCORE[task]
    summary = {
        f"selection_ensemble_{key}": ens.selection.score,
        f"selection_best_single_{key}": ens.selection.best_single[1][key],
        f"submitted_ensemble_all_val_{key}": ens.submitted.score,
    }
    for who, scores in ens.holdout.items():
        summary.update({f"holdout_{who}_{k}": v for k, v in scores.items()})
    return summary


def write_outputs(
    task: Task,
    out_dir: Path,
    prepared: Prepared,
    ens: EnsembleResult,
    members: list[Member],
    costs: list[TrialCost],
    test: dict[str, np.ndarray] | None = None,
) -> tuple[Path | None, list[Path]]:
    """The submission (under the search's own folder) of ``test`` (default: the ensemble's
    test predictions), the recipe and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: list[Path] = []
    submission = None
    template = prepared.corpus.templates.get(task)
    if template is not None:
        test = ens.test if test is None else test
        test = test if task == "va" else {v: p.argmax(-1) for v, p in test.items()}
        submission = write_submission(
            out_dir / SUBMISSION_FILE[task], template, test, prepared.bank.face_mask
        )
        artifacts.append(submission)
    recipe = out_dir / "ensemble_recipe.json"
    atomic_write_text(
        recipe,
        json.dumps(
            {
                "submitted": asdict(ens.submitted.recipe),
                "fitted_on": list(ens.submitted.videos),
                "selection_recipe": asdict(ens.selection.recipe),
                "selection_videos": list(ens.selection.videos),
                "holdout_videos": list(prepared.bank.splits["holdout"]),
                "members": {m.trial_id: m.description for m in members},
                "scores": ensemble_summary(task, ens),
            },
            indent=1,
        ),
    )
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
    return submission, artifacts


def run_search_job(args: argparse.Namespace) -> int:
    """The job, end to end; its exit status (0 done, 2 bad input, 1 no trial finished,
    130/143 interrupted by SIGINT/SIGTERM, with no ensemble or submission written)."""
    started = time.time()
    if args.space is None:
        args.space = default_space(args.task, args.data is None, args.realistic)
    space = load_search_space(args.space)
    task = space.task
    pseudo = None
    if args.pseudo_labels is not None:
        try:
            pseudo = PseudoLabels.load(args.pseudo_labels)
        except (OSError, ValueError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if pseudo.task != task:
            print(
                f"error: {args.pseudo_labels}: pseudo-labels of task {pseudo.task}, the space's "
                f"task is {task}",
                file=sys.stderr,
            )
            return 2
        space = space.with_choice("pseudo_labels", (False, True))
    problem = check_output_dir(args.output)
    if problem is None and args.data is not None:
        try:
            preflight(args.data, task)
        except CorpusNotFoundError as err:
            problem = str(err)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    output = args.output.resolve()
    storage = args.storage or str(output / "ray_results")
    if args.name is None:
        args.name = latest_search(storage, task) if args.resume else search_name(task, started)
        if args.name is None:
            print(f"error: no search_{task}-* under {storage} to resume", file=sys.stderr)
            return 2
    cfg = search_config(args, space, storage)
    if args.resume != can_resume(cfg):
        print(name_refusal(cfg.experiment_uri(), "search", args.resume), file=sys.stderr)
        return 2
    uri, experiment = tracking.tracking_uri(output), f"abaw-{task}"
    with job_on_ray(args, "search", cfg.name, output) as console:
        return search_on_ray(args, space, cfg, output, uri, experiment, console, started, pseudo)


def search_on_ray(
    args: argparse.Namespace,
    space: SearchSpace,
    cfg: SearchConfig,
    output: Path,
    uri: str,
    experiment: str,
    console: Console,
    started: float,
    pseudo: PseudoLabels | None = None,
) -> int:
    """prepare -> search -> (``finish_search``); stops cleanly on SIGINT / SIGTERM."""
    parent = None
    try:
        with interruptible_job():  # after init_ray, which sets its own SIGTERM handler
            prepared = prepare_search(
                args, space, cfg, output, pseudo.holdout_videos if pseudo else None
            )
            problem = folds_problem(prepared.bank, args.folds, cfg.seed)
            if problem is None and pseudo is not None:
                problem = pseudo_problem(pseudo, prepared.bank, args.pseudo_labels)
                prepared.pseudo_ref = ray.put(pseudo)
            if problem is not None:
                print(f"error: {problem}", file=console.err)
                return 2
            combos = space.combinations(prepared.keys)
            parent = tracking.parent_run(
                uri,
                experiment,
                cfg.name,
                {
                    "space": args.space,
                    "data": args.data or ("realistic" if args.realistic else "embedded"),
                    "combinations": combos,
                    "holdout_videos": prepared.bank.splits["holdout"],
                    "folds": args.folds,
                    "pseudo_labels": args.pseudo_labels,
                    **{k: v for k, v in asdict(cfg).items() if k not in ("space", "name")},
                },
                output / f"{cfg.name}.mlflow.json",
                args.resume,
            )
            tuner = build_tuner(
                cfg,
                prepared.bank_ref,
                combos,
                callbacks=[
                    tracking.trial_callback(uri, experiment, parent),
                    report.trial_progress(cfg.metric, cfg.num_samples),
                ],
                resume=args.resume,
                verbose=1 if args.ray_logs else 0,
                pseudo_ref=prepared.pseudo_ref,
                predict_unlabelled=args.make_pseudo_labels,
            )
            with stoppable_search() as stopped:
                results = tuner.fit()
            if stopped.is_set():
                raise Interrupted(stopped.signum)
            return finish_search(
                args, cfg, prepared, results, uri, experiment, parent, console, started
            )
    except Interrupted as err:
        killed = tracking.kill_runs(uri, parent) if parent else 0
        print(
            f"\ninterrupted by {err}: the search is saved; no ensemble or submission was "
            f"written; {killed + (parent is not None)} MLflow run(s) marked KILLED.\n"
            f"Resume it with the same command plus: --resume --name {cfg.name}",
            file=console.err,
        )
        return 128 + err.signum


def prepare_search(
    args: argparse.Namespace,
    space: SearchSpace,
    cfg: SearchConfig,
    output: Path,
    holdout_videos: tuple[str, ...] | None = None,
) -> Prepared:
    alignments = next((p.args for p in space.parameters if p.name == "alignment"), ("interp",))
    return prepare(
        args.data,
        args.store or output / "features",
        space.extractors,
        space.task,
        tiny=True if args.tiny else None,
        weights_dir=args.weights_dir,
        alignments=alignments,
        holdout=cfg.holdout,
        seed=cfg.seed,
        realistic=args.realistic,
        holdout_videos=holdout_videos,
    )


def finish_search(
    args: argparse.Namespace,
    cfg: SearchConfig,
    prepared: Prepared,
    results: Any,
    uri: str,
    experiment: str,
    parent: str,
    console: Console,
    started: float,
) -> int:
    """Trials -> ensemble -> outputs -> MLflow -> the summary, printed last."""
    task, bank = cfg.space.task, prepared.bank
    outcomes = collect_outcomes(cfg, results)
    costs = trial_costs(cfg, outcomes)
    with contextlib.redirect_stdout(console.out):
        report.print_trials(task, outcomes)
    pause_point("before_ensemble")
    members = load_members(outcomes, cfg.top_k)
    if not members:
        tracking.finish_run(uri, parent, {}, status="FAILED")
        errors = [f"  trial {o.trial_id}: {o.error}" for o in outcomes if o.error]
        print(
            f"error: no trial of {cfg.name} finished an epoch; see {cfg.experiment_uri()}"
            + ("\n" + "\n".join(errors) if errors else ""),
            file=console.err,
        )
        return 1
    ens = build_ensemble(
        task,
        members,
        bank.splits["val"],
        bank.splits["holdout"],
        bank.splits["test"],
        bank.labels,
        bank.valid,
    )
    output = args.output.resolve()
    folds: FoldResult | None = None
    if args.folds >= 2:
        try:
            with contextlib.redirect_stdout(console.out):
                folds = run_folds(
                    TrialConfig.from_dict(outcomes[0].config),
                    prepared,
                    cfg,
                    args.folds,
                    cfg.seed,
                    outcomes[0].trial_id,
                )
        except RuntimeError as err:
            tracking.finish_run(uri, parent, {}, status="FAILED")
            print(
                f"error: {err}\nno submission was written; the search is saved: the same "
                f"command plus --resume --name {cfg.name} trains the folds again",
                file=console.err,
            )
            return 1
    submission, artifacts = write_outputs(
        task, output / cfg.name, prepared, ens, members, costs, folds.test if folds else None
    )
    summary = {**ensemble_summary(task, ens), **cost_summary(costs)}
    pseudo_path = None
    if args.make_pseudo_labels:
        pseudo = ensemble_pseudo_labels(task, members, ens, bank.valid, cfg.name)
        pseudo_path = pseudo.save(output / cfg.name / PSEUDO_FILE)
        artifacts.append(pseudo_path)
        summary.update(pseudo_frames=pseudo.frames, pseudo_confidence=pseudo.mean_confidence())
    if folds is not None:
        artifacts.append(write_folds_json(output / cfg.name / "folds.json", folds))
        summary.update(folds.summary())
    if task == "expr":
        summary["majority_baseline_val_f1"] = majority_baseline(bank)
    if args.control:
        best = outcomes[0]
        for kind, changes in control_runs(best.config).items():
            params = {**best.config, **changes, "controls": best.trial_id}
            run = {
                "uri": uri,
                "run_id": tracking.child_run(
                    uri, experiment, parent, f"{kind}-{best.trial_id}", params
                ),
            }
            summary[f"{kind}_{PRIMARY_METRIC[task]}"] = train_control(
                best, prepared, cfg, run, changes, kind
            )
    tracking.log_ensemble(
        uri,
        experiment,
        parent,
        summary,
        {"members": len(members), "smoothing": ens.submitted.recipe.smoothing_names()},
        artifacts,
    )
    tracking.log_trial_metrics(
        uri,
        experiment,
        parent,
        {c.trial_id: {"cpu_seconds": c.cpu_seconds, "gpu_seconds": c.gpu_seconds} for c in costs},
    )
    tracking.finish_run(uri, parent, summary)
    with contextlib.redirect_stdout(console.out):
        print(f"\nMLflow: {uri}  (mlflow ui --host 127.0.0.1 --backend-store-uri {uri})")
        print(f"Ray results: {cfg.experiment_uri()}   wall time {time.time() - started:.0f} s")
        report.print_summary(
            task, ens, members, bank, summary, submission, outcomes[0] if args.control else None
        )
        if pseudo_path is not None:
            print(
                f"pseudo-labels: {summary['pseudo_frames']} unlabelled frames of training and "
                f"test videos, mean confidence {summary['pseudo_confidence']:.3f} -> "
                f"{pseudo_path}; a search trains on them with --pseudo-labels {pseudo_path.parent}"
            )
        if folds is not None:
            print_folds(folds)
        report.print_cost(costs, summary, PRIMARY_METRIC[task])
    return 0
