"""The main job: corpus -> features -> Ray Tune search -> ensemble -> VA submission.

    python jobs/search_va.py [--data ROOT] [--output DIR] [--space FILE] [--num-samples N] [--tiny]
    ray job submit --working-dir . -- python jobs/search_va.py --data /data/affwild2 \\
        --output /shared/abaw --gpus-per-trial 0.25

Without --data it runs on the embedded synthetic corpus. Every trial, the ensemble and the
submission are recorded in MLflow (sqlite:///OUTPUT/mlflow.db unless MLFLOW_TRACKING_URI is
set). A killed search continues with --resume.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import ray

from abaw_ray import tracking
from abaw_ray.ensemble import Member, build_ensemble
from abaw_ray.report import plot_best_over_time, plot_per_video_ccc, plot_va_traces
from abaw_ray.submission import write_submission
from abaw_ray.train.loop import load_predictions
from abaw_ray.train.prepare import prepare
from abaw_ray.tune.search import SearchConfig, build_tuner, can_resume, collect_outcomes
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None, task: str = "va") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    p.add_argument("--name", default=f"search_{task}")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--time-budget", type=float, help="seconds before no new trial starts")
    p.add_argument("--top-k", type=int, default=5, help="trials offered to the ensemble")
    p.add_argument("--store", type=Path, help="feature store (default: OUTPUT/features)")
    p.add_argument("--weights-dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output.resolve()
    space = load_search_space(args.space)
    storage = args.storage or str(output / "ray_results")
    ray.init(num_cpus=args.num_cpus, ignore_reinit_error=True)
    started = time.time()

    alignments = next((p.args for p in space.parameters if p.name == "alignment"), ("interp",))
    prepared = prepare(
        args.data,
        args.store or output / "features",
        space.extractors,
        space.task,
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
    experiment = f"abaw-{space.task}"
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
    results = tuner.fit()
    outcomes = collect_outcomes(cfg, results)
    metric = cfg.metric

    print(
        f"\n{len(outcomes)} trials ({sum(o.best is not None for o in outcomes)} with a "
        f"checkpoint); top trials by {metric}:"
    )
    print(
        f"  {'trial':<14}{metric:>9}{'valence':>8}{'arousal':>8}{'epoch':>6}  model        features"
    )
    for o in outcomes[:10]:
        if o.best is None:
            continue
        print(
            f"  {o.trial_id:<14}{o.best[metric]:>9.4f}{o.best['val_ccc_valence']:>8.3f}"
            f"{o.best['val_ccc_arousal']:>8.3f}{o.best['epoch']:>6}  "
            f"{o.config.get('model', '?'):<12} {o.config.get('features', '?')}"
        )

    bank = prepared.bank
    members = []
    for o in [o for o in outcomes if o.checkpoint][: args.top_k]:
        ckpt = ray.train.Checkpoint(o.checkpoint)
        with ckpt.as_directory() as d:
            preds = load_predictions(d)
        members.append(
            Member(
                o.trial_id,
                preds["val"],
                preds["test"],
                f"{o.config.get('model')} {o.config.get('features')}",
            )
        )
    ens = build_ensemble(
        space.task, members, bank.splits["val"], bank.splits["test"], bank.labels, bank.valid
    )

    out_dir = output / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = []
    template = prepared.corpus.templates.get(space.task)
    if template is not None:
        submission = write_submission(
            output / "submission" / "VA_submission.txt", template, ens.test, bank.face_mask
        )
        artifacts.append(submission)
    else:
        submission = None
        print("warning: the corpus has no VA test template; no submission written")
    recipe = out_dir / "ensemble_recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "recipe": asdict(ens.recipe),
                "members": {m.trial_id: m.description for m in members},
                "val_score": ens.val_score,
                "best_single": ens.best_single,
                "split_half": ens.split_half,
            },
            indent=1,
        )
    )
    artifacts.append(recipe)
    artifacts.append(
        plot_va_traces(
            out_dir / "val_traces.png",
            ens.val,
            bank.labels,
            bank.valid,
            bank.splits["val"],
            bank.fps,
        )
    )
    artifacts.append(
        plot_per_video_ccc(
            out_dir / "per_video_ccc.png", ens.val, bank.labels, bank.valid, bank.splits["val"]
        )
    )
    done = [
        (o.last.get("timestamp", started) - started, o.best[metric]) for o in outcomes if o.best
    ]
    artifacts.append(
        plot_best_over_time(
            out_dir / "best_over_time.png", [d[0] for d in done], [d[1] for d in done], metric
        )
    )
    ens_metrics = {
        f"ensemble_{metric}": ens.val_score,
        f"best_single_{metric}": ens.best_single[1],
        **{f"ensemble_{k}": v for k, v in ens.val_scores.items()},
        **{f"split_half {k}": v for k, v in ens.split_half.items()},
    }
    tracking.log_ensemble(
        uri,
        experiment,
        parent,
        ens_metrics,
        {"members": len(members), "smoothing": ens.recipe.smoothing},
        artifacts,
    )
    tracking.finish_parent(uri, parent, ens_metrics)

    print(f"\nbest single trial {ens.best_single[0]}: {metric} {ens.best_single[1]:.4f}")
    print(
        f"ensemble of {len(members)} trials: {metric} {ens.val_score:.4f} "
        f"(valence {ens.val_scores['valence']:.4f}, arousal {ens.val_scores['arousal']:.4f}; "
        f"smoothing {ens.recipe.smoothing})"
    )
    if not ens.split_half:
        print("split-half estimate: needs at least 2 validation videos")
    else:
        print(
            f"honest split-half estimate (select on half the val videos, score the other): "
            f"ensemble {ens.split_half['mean']:.4f}, best single "
            f"{ens.split_half['best single mean']:.4f}"
        )
    print(f"submission: {submission or '-'}")
    print(f"MLflow: {uri}  (mlflow ui --backend-store-uri {uri})")
    print(f"Ray results: {cfg.experiment_uri()}   wall time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
