"""The single-trial recipe behind ``jobs/train_va.py`` and ``jobs/train_expr.py``: one Ray
Train ``TorchTrainer``, its scores printed, every epoch in MLflow."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import get_args

import ray
import yaml

from abaw_ray import tracking
from abaw_ray.data.corpus import load_corpus, preflight
from abaw_ray.errors import CorpusNotFoundError
from abaw_ray.features.align import ALIGNMENTS
from abaw_ray.features.store import store_key
from abaw_ray.fsutil import ensure_results_dir, run_stamp
from abaw_ray.metrics import score_split
from abaw_ray.models import list_models
from abaw_ray.report import count_of
from abaw_ray.runtime import (
    SMOKE_ENV,
    SMOKE_EPOCHS,
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
    trial_resources,
)
from abaw_ray.tasks import OFFICIAL_SCORE, PRIMARY_METRIC, Task
from abaw_ray.train.loop import Mode, TrialConfig, load_predictions
from abaw_ray.train.prepare import EMBEDDED_FEATURES, prepare, resolve_corpus
from abaw_ray.train.trainer import error_tail, fit_trial

# TrialConfig fields a flag overrides: flag -> (field, type, help)
TRIAL_FLAGS = {
    "--model": ("model", str, "fusion model"),
    "--mode": ("mode", str, "frozen: features from the store; finetune: train the backbone too"),
    "--alignment": ("alignment", str, "audio to frames: interp, pool or conv"),
    "--epochs": ("epochs", int, "epochs at most"),
    "--seed": ("seed", int, "seed of the trial (and of the held-out draw)"),
}


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs, values read as YAML scalars (``hidden=128``, ``gates=reference``):
    any trial setting or model setting (checked with the rest when the trial is built)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. hidden=128")
        out[key] = yaml.safe_load(value)
    return out


def train_parser(task: Task, doc: str | None, default_model: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_corpus_flags(p)
    defaults = {f.name: f.default for f in fields(TrialConfig)}
    defaults["model"] = default_model
    choices = {"model": list_models(), "mode": list(get_args(Mode)), "alignment": ALIGNMENTS}
    for flag, (name, kind, text) in TRIAL_FLAGS.items():
        p.add_argument(
            flag,
            type=kind,
            choices=choices.get(name),
            help=f"{text} (default: {defaults[name]})",
        )
    p.set_defaults(model=default_model)
    p.add_argument(
        "--features",
        help=f"comma-separated extractors (embedded default: {','.join(EMBEDDED_FEATURES)}); "
        f"in finetune mode the backbone (default: mobilenetv3)",
    )
    add_resource_flags(p)
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="validation videos the best epoch is not chosen on: a fraction, a count or 0 "
        "(default: 0; the searches hold out a third)",
    )
    p.add_argument(
        "--shift-labels",
        action="store_true",
        help="train the control: labels and their masks shifted within each video (default: off)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other trial setting, e.g. --set hidden=128 --set gates=reference "
        "(default: TrialConfig's, then the model's own)",
    )
    p.add_argument(
        "--name",
        help=f"run name (default: train_{task}-<model>-<start time>; with --resume the latest "
        f"train_{task}-* under OUTPUT/runs)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run (default: off)"
    )
    add_ray_flags(p)
    return p


def run_train_job(args: argparse.Namespace, task: Task) -> int:
    if args.data is not None and not args.features:
        raise SystemExit("--features is required with --data")
    if args.data is not None:
        try:
            preflight(args.data, task)
        except CorpusNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    flags = {name: getattr(args, flag[2:]) for flag, (name, *_) in TRIAL_FLAGS.items()}
    overrides = {
        "task": task,
        "shift_labels": args.shift_labels,
        **{k: v for k, v in flags.items() if v is not None},
        **parse_overrides(args.set),
    }
    if smoke_run():
        overrides["epochs"] = min(overrides.get("epochs", SMOKE_EPOCHS), SMOKE_EPOCHS)
        print(f"{SMOKE_ENV} is set: a smoke run of {overrides['epochs']} epochs")
    try:  # every setting checked before anything starts
        TrialConfig.from_dict(overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mode = overrides.get("mode", TrialConfig.mode)
    control = "control-" if args.shift_labels else ""
    problem = check_output_dir(args.output)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    output = ensure_results_dir(args.output.resolve())
    if args.store is not None:
        ensure_results_dir(args.store)
    storage = output / "runs"
    # Ray Train resumes a run whose (storage, name) exists: only --resume may reuse a name.
    name = args.name
    if name is None and args.resume:
        runs = sorted(storage.glob(f"train_{task}-*/"), key=lambda d: d.stat().st_mtime)
        name = runs[-1].name if runs else None
    name = name or f"train_{task}-{args.model}-{control}{run_stamp()}"
    if args.resume != (storage / name).is_dir():
        print(name_refusal(str(storage / name), "run", args.resume), file=sys.stderr)
        return 2
    seed = overrides.get("seed", TrialConfig.seed)
    with job_on_ray(args, "trial", name, output) as console:
        return train_on_ray(args, task, overrides, mode, name, output, storage, seed, console)


def train_on_ray(
    args: argparse.Namespace,
    task: Task,
    overrides: dict,
    mode: str,
    name: str,
    output: Path,
    storage: Path,
    seed: int,
    console: Console,
) -> int:
    """prepare -> one TorchTrainer -> its scores, printed to ``console`` (Ray's own output goes
    to the job's log); the exit status."""
    if mode == "finetune":
        from abaw_ray.train.finetune import build_frame_index

        root, embedded = resolve_corpus(args.data, args.realistic)
        backbone = (args.features or "mobilenetv3").split(",")[0]
        features = store_key(backbone, args.tiny or embedded)
        index = build_frame_index(load_corpus(root), task, args.holdout, seed)
        data = index
    else:
        names = args.features.split(",") if args.features else list(EMBEDDED_FEATURES)
        prepared = prepare(
            args.data,
            args.store or output / "features",
            names,
            task,
            tiny=True if args.tiny else None,
            weights_dir=args.weights_dir,
            alignments=(overrides.get("alignment", TrialConfig.alignment),),
            holdout=args.holdout,
            seed=seed,
            realistic=args.realistic,
        )
        features = "+".join(prepared.keys[n] for n in names)
        data = prepared.bank
    trial = TrialConfig.from_dict({**overrides, "features": features})
    metric = PRIMARY_METRIC[task]
    resources = trial_resources(args)
    splits = data.splits

    uri = tracking.tracking_uri(output)
    run_id = tracking.parent_run(
        uri,
        f"abaw-{task}-trials",
        name,
        {**trial.settings(), "holdout_videos": splits["holdout"], **asdict(resources)},
        storage / f"{name}.mlflow.json",
        resume=args.resume,
    )
    try:

        def epoch_line(epoch: int, metrics: dict[str, float]) -> None:
            print(
                f"epoch {epoch}/{trial.epochs}: {metric} {metrics[metric]:.4f} "
                f"(best {metrics[f'best_{metric}']:.4f})",
                file=console.out,
            )

        with interruptible_job(), tracking.epoch_relay(uri, run_id, epoch_line) as relay:
            result = fit_trial(
                trial=trial,
                data_ref=ray.put(data),
                storage_path=storage,
                name=name,
                workers=resources.workers,
                gpus_per_worker=resources.gpus / resources.workers,
                cpus_per_worker=resources.cpus_per_worker,
                epoch_relay=relay,
            )
    except ray.train.TrainingFailedError as err:
        tracking.finish_run(uri, run_id, {}, status="FAILED")
        print(f"trial {name} failed: {error_tail(err)}", file=console.err)
        return 1
    except (Interrupted, KeyboardInterrupt) as err:
        tracking.finish_run(uri, run_id, {}, status="KILLED")
        print(
            f"\ninterrupted ({err or 'SIGINT'}): the run is saved up to its last checkpoint "
            f"and its MLflow run marked KILLED.\nResume it with: {resume_command(name)}",
            file=console.err,
        )
        return 128 + getattr(err, "signum", 2)
    if not result.best_checkpoints:
        tracking.finish_run(uri, run_id, {}, status="FAILED")
        print(f"trial {name}: no epoch finished", file=console.err)
        return 1
    checkpoint, best = result.best_checkpoints[0]
    final = {f"best_{k}": v for k, v in best.items() if k.startswith("val_")}
    key = OFFICIAL_SCORE[task]
    if splits["holdout"]:  # scored once, now: the best epoch was chosen without them
        with checkpoint.as_directory() as d:
            held = load_predictions(d)["holdout"]
        scores = score_split(task, held, splits["holdout"], data.labels, data.valid)
        final.update({f"holdout_{k}": v for k, v in scores.items()})
    tracking.finish_run(uri, run_id, final)
    out = console.out
    print(
        f"trial {name}: {mode} model {trial.model}, features {trial.features}, "
        f"{resources.workers} worker(s)"
        f"{', shifted-label control' if trial.shift_labels else ''}",
        file=out,
    )
    if task == "va":
        print(
            f"  best epoch {best['epoch']}: val CCC {best[metric]:.4f} "
            f"(valence {best['val_ccc_valence']:.4f}, arousal {best['val_ccc_arousal']:.4f})"
            f" on the {count_of(len(splits['selection']), 'selection video')}",
            file=out,
        )
    else:
        what = "mean F1 of the 12 units at 0.5" if task == "au" else "macro F1"
        print(
            f"  best epoch {best['epoch']}: val {what} {best[metric]:.4f}"
            f" on the {count_of(len(splits['selection']), 'selection video')}",
            file=out,
        )
    if splits["holdout"]:
        n = count_of(len(splits["holdout"]))
        print(
            f"  held out ({n}, not selected on): {key} {final[f'holdout_{key}']:.4f}",
            file=out,
        )
    print(f"  checkpoint: {checkpoint.path}", file=out)
    print(f"  MLflow: {uri} (experiment abaw-{task}-trials, run {name})", file=out)
    return 0
