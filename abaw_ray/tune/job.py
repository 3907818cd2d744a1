"""The search recipe behind ``jobs/search_va.py`` and ``jobs/search_expr.py``; the task comes
from the search space's YAML.

space -> prepare (corpus, features, bank) -> search (Ray Tune over Ray Train trials) ->
ensemble (fit on the selection videos, estimate on the held-out ones, refit on all) ->
outputs (submission, recipe, plots, MLflow) -> summary.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
import traceback
import typing
import zipfile
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import ray

from abaw_ray import report, tracking
from abaw_ray.data.corpus import preflight
from abaw_ray.ensemble import (
    EnsembleResult,
    Member,
    build_ensemble,
    ensemble_pseudo_labels,
    list_ensemble_methods,
)
from abaw_ray.errors import BadInputError, CorpusNotFoundError, InputFormatError
from abaw_ray.features.store import StoreMismatchError
from abaw_ray.features.weights import WeightsNotFoundError
from abaw_ray.fsutil import ensure_results_dir
from abaw_ray.pause import pause_point
from abaw_ray.pseudo import PSEUDO_FILE, PseudoLabels
from abaw_ray.runtime import (
    SMOKE_ENV,
    SMOKE_EPOCHS,
    SMOKE_SAMPLES,
    Console,
    Interrupted,
    add_corpus_flags,
    add_ray_flags,
    add_resource_flags,
    check_output_dir,
    interruptible_job,
    job_on_ray,
    name_refusal,
    resume_command,
    smoke_run,
    starts_local_instance,
    stoppable_search,
    trial_resources,
)
from abaw_ray.tasks import PRIMARY_METRIC, Task
from abaw_ray.train.bank import FeatureBank
from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.prepare import Prepared, prepare
from abaw_ray.tune.capacity import cluster_shape
from abaw_ray.tune.controls import run_controls
from abaw_ray.tune.cost import trial_costs
from abaw_ray.tune.folds import (
    FoldResult,
    fold_count,
    folds_problem,
    print_folds,
    run_folds,
)
from abaw_ray.tune.outputs import search_summary, write_outputs
from abaw_ray.tune.search import (
    SearchConfig,
    TrialOutcome,
    build_tuner,
    can_resume,
    collect_outcomes,
    latest_search,
    search_name,
    trial_folder_name,
    trial_params,
    trials_at_most,
)
from abaw_ray.tune.space import SearchSpace, SearchSpaceError, load_search_space

REPO = Path(__file__).resolve().parents[2]
# What a job says in one line and exits 2 for: input it cannot use, found while it prepares.
INPUT_ERRORS = (
    BadInputError,
    CorpusNotFoundError,
    InputFormatError,
    StoreMismatchError,
    WeightsNotFoundError,
)

# SearchConfig fields a flag overrides: flag -> (field, type, help)
CONFIG_FLAGS = {
    "--num-samples": ("num_samples", int, "trials to run"),
    "--searcher": (
        "searcher",
        str,
        "tpe (Optuna TPE), random, or grid (the paper's protocol: every feature combination x "
        "model, other settings at their defaults, then again with the next trial seed)",
    ),
    "--scheduler": (
        "scheduler",
        str,
        "asha (stop weak trials early), rounds (ASHA and TPE in rounds of trials at once: the "
        "same seed gives the same trials, slots idle at each round's end), none, or auto "
        "(rounds on the job's own Ray instance, asha on a cluster)",
    ),
    "--concurrency": (
        "max_concurrent",
        int,
        "trials at once at most (None: what the cluster holds as it grows, plus a few waiting "
        "for the autoscaler)",
    ),
    "--time-budget": ("time_budget_s", float, "seconds after which no new trial starts"),
    "--top-k": ("top_k", int, "best trials offered to the ensemble"),
    "--ensemble": ("ensemble", str, "how the ensemble weighs its trials"),
    "--holdout": (
        "holdout",
        float,
        "validation videos that nothing selects on, scored once at the end: a fraction "
        "(0.33), a number of videos (2), or 0 for none; whole raw videos, drawn so that "
        "the selection videos hold every EXPR class and AU the held-out ones do",
    ),
    "--seed": ("seed", int, "seed of the searcher, the held-out draw and the trials"),
}


def search_parser(task: Task, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_corpus_flags(p, f" and its space, search_spaces/realistic_{task}.yaml")
    p.add_argument(
        "--space",
        type=Path,
        help=f"search space YAML; its task decides the job (default: search_spaces/{task}.yaml, "
        f"the paper's features, with --data; search_spaces/embedded_{task}.yaml without)",
    )
    p.set_defaults(task=task)
    add_resource_flags(p)
    defaults = {f.name: f.default for f in fields(SearchConfig)}
    hints = typing.get_type_hints(SearchConfig)
    choices = {"ensemble": list_ensemble_methods()}
    for flag, (name, kind, text) in CONFIG_FLAGS.items():
        default = defaults[name]
        shown = f"{default:.3g}" if isinstance(default, float) else default
        literal = typing.get_origin(hints[name]) is typing.Literal
        valid = choices.get(name) or (list(typing.get_args(hints[name])) if literal else None)
        p.add_argument(flag, type=kind, choices=valid, help=f"{text} (default: {shown})")
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
        space=space,
        storage_path=storage,
        name=args.name,
        local_instance=local,
        resources=trial_resources(args),
        **given,
    )


def load_members(
    outcomes: list[TrialOutcome], top_k: int, warn: Callable[[str], None] = print
) -> list[Member]:
    """The ``top_k`` trials by selection score whose checkpoints' predictions load (one that
    cannot is named, ``warn``, and the next trial takes its place)."""
    members = []
    for o in [o for o in outcomes if o.checkpoint]:
        if len(members) == top_k:
            break
        try:
            with ray.train.Checkpoint(o.checkpoint).as_directory() as d:
                preds = load_predictions(d)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            warn(f"warning: skipped trial {o.trial_id}: its predictions cannot be read ({err})")
            continue
        members.append(
            Member(
                o.trial_id,
                {**preds["selection"], **preds["holdout"]},
                preds["test"],
                f"{o.config.get('model')} {o.config.get('features')}",
                preds["unlabelled"],
            )
        )
    return members


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


def run_search_job(args: argparse.Namespace) -> int:
    """The job, end to end; its exit status (0 done, 2 bad input, 1 no trial finished,
    130/143 interrupted by SIGINT/SIGTERM, with no ensemble or submission written)."""
    started = time.time()
    if args.space is None:
        args.space = default_space(args.task, args.data is None, args.realistic)
    try:
        space = load_search_space(args.space)
    except SearchSpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
    if smoke_run():
        space = space.with_value("epochs", SMOKE_EPOCHS).with_value("patience", SMOKE_EPOCHS)
        args.num_samples = min(args.num_samples or SMOKE_SAMPLES, SMOKE_SAMPLES)
        print(
            f"{SMOKE_ENV} is set: a smoke run of {args.num_samples} trials of {SMOKE_EPOCHS} epochs"
        )
    problem = check_output_dir(args.output)
    if problem is None and args.data is not None:
        try:
            preflight(args.data, task)
        except CorpusNotFoundError as err:
            problem = str(err)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    output = ensure_results_dir(args.output.resolve())
    if args.store is not None:
        ensure_results_dir(args.store)
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
            print(
                "preparing: the corpus, its features (extracting what the store lacks) and "
                "their shards in Ray's object store",
                file=console.out,
            )
            try:
                prepared = prepare_search(
                    args, space, cfg, output, pseudo.holdout_videos if pseudo else None
                )
                cfg = sized_by_cluster(cfg, console)
            except INPUT_ERRORS as err:
                print(f"error: {err}", file=console.err)
                return 2
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
                    tracking.trial_callback(uri, experiment, parent, trial_params),
                    report.trial_progress(cfg.metric, cfg.num_samples, trial_folder_name),
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
        if can_resume(cfg):
            print(
                f"\ninterrupted by {err}: the search is saved; no ensemble or submission was "
                f"written; {killed + (parent is not None)} MLflow run(s) marked KILLED.\n"
                f"Resume it with: {resume_command(cfg.name)}",
                file=console.err,
            )
        else:
            print(
                f"\ninterrupted by {err} before the search started: nothing to resume "
                "(the features extracted so far are kept; the same command starts again)",
                file=console.err,
            )
        return 128 + err.signum
    except Exception as err:  # a failure, not bad input: its runs are marked, its trace logged
        traceback.print_exc()  # into the job's log (standard error goes there)
        failed = tracking.kill_runs(uri, parent, "FAILED") if parent else 0
        print(
            f"error: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}\n"
            f"the traceback is in {output / 'logs' / (cfg.name + '.log')}; "
            f"{failed + (parent is not None)} MLflow run(s) marked FAILED",
            file=console.err,
        )
        return 1


def sized_by_cluster(cfg: SearchConfig, console: Console) -> SearchConfig:
    """``cfg`` with what the cluster can grow to (``capacity.cluster_shape``; nothing on a
    job's own local instance), said in a line."""
    if cfg.local_instance:
        return cfg
    cfg = replace(cfg, largest=cluster_shape())
    most = trials_at_most(cfg)
    if most is None:
        line = (
            "no autoscaler configuration found: trials in flight follow the nodes that are up, "
            "plus as many waiting for new ones"
        )
    else:
        line = f"the cluster grows to {most} trials at once ({cfg.largest.source}): no more wait"
    print(f"concurrency: {line}", file=console.out)
    return cfg


def prepare_search(
    args: argparse.Namespace,
    space: SearchSpace,
    cfg: SearchConfig,
    output: Path,
    holdout_videos: tuple[str, ...] | None = None,
) -> Prepared:
    alignments = space.alignments()
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
    """Trials -> ensemble -> (folds) -> outputs -> (pseudo-labels, controls) -> MLflow -> the
    summary, printed last."""
    task, bank, out_dir = cfg.space.task, prepared.bank, args.output.resolve() / cfg.name
    warn = functools.partial(print, file=console.err)
    outcomes = collect_outcomes(cfg, results, warn)
    costs = trial_costs(cfg, outcomes)
    with contextlib.redirect_stdout(console.out):
        report.print_trials(task, outcomes)
        print_rerun_note(cfg)
    pause_point("before_ensemble")

    members = load_members(outcomes, cfg.top_k, warn)
    if not members:
        tracking.finish_run(uri, parent, {}, status="FAILED")
        warn(f"error: no trial of {cfg.name} finished an epoch; see {cfg.experiment_uri()}")
        warn("\n".join(f"  trial {o.trial_id}: {o.error}" for o in outcomes if o.error))
        return 1
    splits = bank.splits
    ens = build_ensemble(
        task,
        members,
        splits["selection"],
        splits["holdout"],
        splits["test"],
        bank.labels,
        bank.valid,
        cfg.ensemble,
    )

    folds: FoldResult | None = None
    if args.folds >= 2:
        best = TrialConfig.from_dict(outcomes[0].config)
        try:
            with contextlib.redirect_stdout(console.out):
                folds = run_folds(best, prepared, cfg, args.folds, cfg.seed, outcomes[0].trial_id)
        except RuntimeError as err:
            tracking.finish_run(uri, parent, {}, status="FAILED")
            warn(
                f"error: {err}\nno submission was written; the search is saved: "
                f"{resume_command(cfg.name)} trains the folds again"
            )
            return 1

    submission, artifacts = write_outputs(task, out_dir, prepared, ens, members, costs, folds)
    summary = search_summary(task, ens, folds, costs, bank)
    pseudo_path = None
    if args.make_pseudo_labels:
        pseudo = ensemble_pseudo_labels(task, members, ens, bank.valid, cfg.name)
        pseudo_path = pseudo.save(out_dir / PSEUDO_FILE)
        artifacts.append(pseudo_path)
        summary.update(pseudo_frames=pseudo.frames, pseudo_confidence=pseudo.mean_confidence())
    if args.control:
        summary.update(run_controls(outcomes[0], prepared, cfg, uri, experiment, parent))

    tracking.log_finished_search(
        uri,
        experiment,
        parent,
        summary,
        ensemble_params(ens, members, folds),
        artifacts,
        {c.trial_id: {"cpu_seconds": c.cpu_seconds, "gpu_seconds": c.gpu_seconds} for c in costs},
    )
    with contextlib.redirect_stdout(console.out):
        print(f"\nMLflow: {tracking.ui_link(uri, experiment)}")
        print(f"Ray results: {cfg.experiment_uri()}   wall time {time.time() - started:.0f} s")
        control_of = outcomes[0] if args.control else None
        report.print_summary(
            task,
            ens,
            members,
            bank,
            summary,
            submission,
            control_of,
            folds,
            report.trial_names(outcomes),
        )
        if pseudo_path is not None:
            report.print_pseudo_labels(summary, pseudo_path)
        if folds is not None:
            print_folds(folds)
        report.print_submission(submission)
        report.print_cost(costs, summary, PRIMARY_METRIC[task])
    return 0


def print_rerun_note(cfg: SearchConfig) -> None:
    """Whether a rerun with the same seed prints the same table, and why not."""
    if cfg.scheduler_used == "rounds":
        print(
            "  (in rounds: the searcher and ASHA saw only ended rounds, so a rerun with the "
            "same seed prints this table)"
        )
    elif cfg.max_concurrent != 1:
        print(
            "  (trials ran side by side: TPE proposed from the results in at the time"
            + (
                ", and ASHA stopped each against the results that reached it first"
                if cfg.scheduler_used == "asha"
                else ""
            )
            + "; a rerun with the same seed may differ, --scheduler rounds does not)"
        )


def ensemble_params(
    ens: EnsembleResult, members: list[Member], folds: FoldResult | None
) -> dict[str, Any]:
    """The ensemble's MLflow parameters: what was submitted, which trials the submitted recipe
    uses (its refit on every validation video may choose others than the selection's) and
    which the selection recipe, scored on the held-out videos, used."""
    return {
        "submitted": "fold ensemble" if folds else "trial ensemble",
        "members_offered": len(members),
        "members_used": ",".join(sorted(ens.submitted.recipe.used_trials())),
        "members_selection": ",".join(sorted(ens.selection.recipe.used_trials())),
        "smoothing": ens.submitted.recipe.smoothing_names(),
    }
