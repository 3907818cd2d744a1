"""The search recipe shared by ``jobs/search_va.py`` and ``jobs/search_expr.py``:
corpus -> features -> Ray Tune search -> ensemble -> validated submission, all in MLflow."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import ray

from abaw_ray import tracking
from abaw_ray.cluster import init_ray
from abaw_ray.data.labels import EXPR_CLASSES, NUM_EXPR_CLASSES, Task
from abaw_ray.ensemble import EnsembleResult, Member, build_ensemble, score_predictions
from abaw_ray.metrics import f1_per_class
from abaw_ray.report import (
    plot_best_over_time,
    plot_confusion,
    plot_per_class_f1,
    plot_per_video_ccc,
    plot_va_traces,
)
from abaw_ray.submission import write_submission
from abaw_ray.train.data import FeatureBank
from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.prepare import prepare
from abaw_ray.train.trainer import build_trainer
from abaw_ray.tune.search import (
    SearchConfig,
    TrialOutcome,
    build_tuner,
    can_resume,
    collect_outcomes,
    latest_search,
)
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[2]
SUBMISSION_FILE: dict[str, str] = {"va": "VA_submission.txt", "expr": "EXPR_submission.txt"}


def search_parser(task: Task, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="Aff-Wild2 root (default: the embedded corpus)")
    p.add_argument("--output", type=Path, default=Path("outputs"))
    p.add_argument("--space", type=Path, default=REPO / "search_spaces" / f"{task}.yaml")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="tiny random extractors on any corpus")
    p.add_argument("--searcher", choices=("tpe", "random"), default="tpe")
    p.add_argument("--scheduler", choices=("asha", "none"), default="asha")
    p.add_argument("--concurrency", type=int, help="trials at once (default: what fits)")
    p.add_argument("--workers-per-trial", type=int, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--storage", help="Tune/Train storage path or URI (default: OUTPUT/ray_results)")
    p.add_argument(
        "--name",
        help=f"search name (default: search_{task}-<time>; with --resume "
        f"the latest search_{task}-* under the storage)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--time-budget", type=float, help="seconds before no new trial starts")
    p.add_argument("--top-k", type=int, default=5, help="trials offered to the ensemble")
    p.add_argument(
        "--control",
        action="store_true",
        help="also train the best trial's settings on shifted labels (a control)",
    )
    p.add_argument("--store", type=Path, help="feature store (default: OUTPUT/features)")
    p.add_argument("--weights-dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance")
    return p


def _print_table(task: Task, metric: str, outcomes: list[TrialOutcome]) -> None:
    extra = ("valence", "arousal") if task == "va" else ()
    head = "".join(f"{h:>9}" for h in extra)
    print(f"  {'trial':<14}{metric:>9}{head}{'epoch':>6}  {'model':<17}features")
    for o in outcomes[:10]:
        if o.best is None:
            print(f"  {o.trial_id:<14}{'-':>9}  ({o.status}, no checkpoint)")
            continue
        cols = "".join(f"{o.best[f'val_ccc_{h}']:>9.3f}" for h in extra)
        print(
            f"  {o.trial_id:<14}{o.best[metric]:>9.4f}{cols}{o.best['epoch']:>6}  "
            f"{o.config.get('model', '?'):<17}{o.config.get('features', '?')}"
        )


def _members(outcomes: list[TrialOutcome], top_k: int) -> list[Member]:
    members = []
    for o in [o for o in outcomes if o.checkpoint][:top_k]:
        with ray.train.Checkpoint(o.checkpoint).as_directory() as d:
            preds = load_predictions(d)
        members.append(
            Member(
                o.trial_id,
                preds["val"],
                preds["test"],
                f"{o.config.get('model')} {o.config.get('features')}",
            )
        )
    return members


def majority_baseline(bank: FeatureBank) -> float:
    """EXPR: macro F1 of always predicting the most frequent training class."""
    train = np.concatenate([bank.labels[v][bank.valid[v]] for v in bank.splits["train"]])
    majority = np.bincount(train, minlength=NUM_EXPR_CLASSES).argmax()
    preds = {
        v: np.eye(NUM_EXPR_CLASSES)[np.full(bank.num_frames[v], majority)]
        for v in bank.splits["val"]
    }
    return score_predictions("expr", preds, bank.splits["val"], bank.labels, bank.valid)


def per_class_f1(bank: FeatureBank, preds: dict[str, np.ndarray]) -> np.ndarray:
    val = bank.splits["val"]
    m = np.concatenate([bank.valid[v] for v in val])
    p = np.concatenate([preds[v] for v in val])[m].argmax(-1)
    return np.nan_to_num(f1_per_class(p, np.concatenate([bank.labels[v] for v in val])[m]))


def _plots(
    task: Task,
    out_dir: Path,
    ens: EnsembleResult,
    best: Member,
    bank: FeatureBank,
    outcomes: list[TrialOutcome],
    metric: str,
    started: float,
) -> list[Path]:
    val = bank.splits["val"]
    if task == "va":
        paths = [
            plot_va_traces(
                out_dir / "val_traces.png", ens.val, bank.labels, bank.valid, val, bank.fps
            ),
            plot_per_video_ccc(
                out_dir / "per_video_ccc.png", ens.val, bank.labels, bank.valid, val
            ),
        ]
    else:
        paths = []
        for name, preds in (("ensemble", ens.val), ("best_trial", best.val)):
            paths.append(
                plot_confusion(
                    out_dir / f"confusion_{name}.png",
                    preds,
                    bank.labels,
                    bank.valid,
                    val,
                    title=name,
                )
            )
            paths.append(
                plot_per_class_f1(
                    out_dir / f"per_class_f1_{name}.png",
                    preds,
                    bank.labels,
                    bank.valid,
                    val,
                    title=name,
                )
            )
    done = [
        (o.last.get("timestamp", started) - started, o.best[metric]) for o in outcomes if o.best
    ]
    paths.append(
        plot_best_over_time(
            out_dir / "best_over_time.png", [d[0] for d in done], [d[1] for d in done], metric
        )
    )
    return paths


def _control(best: TrialOutcome, prepared, storage: str, name: str, metric: str) -> float:
    trial = replace(TrialConfig.from_dict(best.config), shuffle_labels=True)
    trainer = build_trainer(
        trial, prepared.bank_ref, storage, f"{name}-control-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    result = trainer.fit()
    return float(result.best_checkpoints[0][1][metric]) if result.best_checkpoints else np.nan


def run_search_job(args: argparse.Namespace, task: Task) -> int:
    output = args.output.resolve()
    space = load_search_space(args.space)
    if space.task != task:
        print(
            f"error: {args.space} is a {space.task} space; this job searches {task}",
            file=sys.stderr,
        )
        return 2
    storage = args.storage or str(output / "ray_results")
    if args.name is None:
        args.name = (
            latest_search(storage, f"search_{task}")
            if args.resume
            else f"search_{task}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        if args.name is None:
            print(f"error: no search_{task}-* under {storage} to resume", file=sys.stderr)
            return 2
    init_ray(args.num_cpus)
    started = time.time()

    alignments = next((p.args for p in space.parameters if p.name == "alignment"), ("interp",))
    prepared = prepare(
        args.data,
        args.store or output / "features",
        space.extractors,
        task,
        tiny=True if args.tiny else None,
        weights_dir=args.weights_dir,
        alignments=alignments,
    )
    combos = space.combinations(prepared.keys)
    cfg = SearchConfig(
        space=space,
        storage_path=storage,
        name=args.name,
        num_samples=args.num_samples,
        searcher=args.searcher,
        scheduler=args.scheduler,
        max_concurrent=args.concurrency,
        workers_per_trial=args.workers_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        time_budget_s=args.time_budget,
        seed=args.seed,
    )
    if args.resume and not can_resume(cfg):
        print(f"error: nothing to resume at {cfg.experiment_uri()}", file=sys.stderr)
        return 2
    if not args.resume and can_resume(cfg):
        print(
            f"error: {cfg.experiment_uri()} holds a search already: pass --resume to "
            f"continue it, or --name for a new one",
            file=sys.stderr,
        )
        return 2

    uri = tracking.tracking_uri(output)
    experiment = f"abaw-{task}"
    parent = tracking.parent_run(
        uri,
        experiment,
        args.name,
        {
            "space": args.space,
            "num_samples": args.num_samples,
            "searcher": args.searcher,
            "scheduler": args.scheduler,
            "data": args.data or "embedded",
            "combinations": combos,
        },
        output / f"{args.name}.mlflow.json",
        args.resume,
    )
    tuner = build_tuner(
        cfg,
        prepared.bank_ref,
        combos,
        callbacks=[tracking.trial_callback(uri, experiment, parent)],
        resume=args.resume,
    )
    outcomes = collect_outcomes(cfg, tuner.fit())
    metric = cfg.metric
    print(
        f"\n{len(outcomes)} trials ({sum(o.best is not None for o in outcomes)} with a "
        f"checkpoint); top trials by {metric}:"
    )
    _print_table(task, metric, outcomes)

    bank = prepared.bank
    members = _members(outcomes, args.top_k)
    ens = build_ensemble(
        task, members, bank.splits["val"], bank.splits["test"], bank.labels, bank.valid
    )
    best_member = next(m for m in members if m.trial_id == ens.best_single[0])

    out_dir = output / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: list[Path] = []
    submission = None
    template = prepared.corpus.templates.get(task)
    if template is None:
        print(f"warning: the corpus has no {task.upper()} test template; no submission written")
    else:
        test = ens.test if task == "va" else {v: p.argmax(-1) for v, p in ens.test.items()}
        submission = write_submission(
            output / "submission" / SUBMISSION_FILE[task], template, test, bank.face_mask
        )
        artifacts.append(submission)
    recipe = out_dir / "ensemble_recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "recipe": asdict(ens.recipe),
                "members": {m.trial_id: m.description for m in members},
                "val_score": ens.val_score,
                "val_scores": ens.val_scores,
                "best_single": ens.best_single,
                "split_half": ens.split_half,
            },
            indent=1,
        )
    )
    artifacts.append(recipe)
    artifacts += _plots(task, out_dir, ens, best_member, bank, outcomes, metric, started)

    summary = {
        f"ensemble_{metric}": ens.val_score,
        f"best_single_{metric}": ens.best_single[1],
        **{f"split_half {k}": v for k, v in ens.split_half.items()},
    }
    if task == "va":
        summary.update({f"ensemble_{k}": v for k, v in ens.val_scores.items()})
    else:
        summary["majority_baseline_val_f1"] = majority_baseline(bank)
    if args.control:
        summary[f"control_{metric}"] = _control(outcomes[0], prepared, storage, args.name, metric)
    tracking.log_ensemble(
        uri,
        experiment,
        parent,
        summary,
        {"members": len(members), "smoothing": ens.recipe.smoothing},
        artifacts,
    )
    tracking.finish_parent(uri, parent, summary)

    print(f"\nbest single trial {ens.best_single[0]}: {metric} {ens.best_single[1]:.4f}")
    detail = (
        ", ".join(f"{k} {v:.4f}" for k, v in ens.val_scores.items())
        if task == "va"
        else "class probabilities averaged"
    )
    print(
        f"ensemble of {len(members)} trials: {metric} {ens.val_score:.4f} ({detail}; "
        f"smoothing {ens.recipe.smoothing})"
    )
    if not ens.split_half:
        print("split-half estimate: needs at least 2 validation videos")
    else:
        print(
            f"honest split-half estimate (select on half the val videos, score the other "
            f"half): ensemble {ens.split_half['mean']:.4f}, best single "
            f"{ens.split_half['best single mean']:.4f}"
        )
    if task == "expr":
        print(f"majority-class baseline: val_f1 {summary['majority_baseline_val_f1']:.4f}")
        for name, preds in (
            ("ensemble", ens.val),
            (f"best trial {best_member.trial_id}", best_member.val),
        ):
            print(
                f"per-class F1, {name}: "
                + ", ".join(f"{c} {f:.3f}" for c, f in zip(EXPR_CLASSES, per_class_f1(bank, preds)))
            )
    if args.control:
        print(
            f"shifted-label control (best trial's settings): {metric} "
            f"{summary[f'control_{metric}']:.4f}"
        )
    print(f"submission: {submission or '-'}")
    print(f"MLflow: {uri}  (mlflow ui --backend-store-uri {uri})")
    print(f"Ray results: {cfg.experiment_uri()}   wall time {time.time() - started:.0f} s")
    return 0
