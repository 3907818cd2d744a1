"""The single-trial recipe shared by ``jobs/train_va.py`` and ``jobs/train_expr.py``."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

import yaml

from abaw_ray.cluster import init_ray
from abaw_ray.data.corpus import load_corpus
from abaw_ray.data.labels import Task
from abaw_ray.features.store import store_key
from abaw_ray.train.loop import PRIMARY_METRIC, TrialConfig
from abaw_ray.train.prepare import EMBEDDED_FEATURES, prepare, resolve_corpus
from abaw_ray.train.trainer import build_trainer


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs, values read as YAML scalars (``hidden=128``, ``gates=reference``)."""
    known = {f.name for f in fields(TrialConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set {item!r}: expected key=value with key in {sorted(known)}")
        out[key] = yaml.safe_load(value)
    return out


def train_parser(task: Task, doc: str | None, default_model: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path)
    p.add_argument("--tiny", action="store_true", help="tiny random extractors on any corpus")
    p.add_argument("--model", default=default_model)
    p.add_argument(
        "--features",
        help=f"comma-separated (embedded default: "
        f"{','.join(EMBEDDED_FEATURES)}); in finetune mode the "
        f"backbone (default mobilenetv3)",
    )
    p.add_argument(
        "--mode",
        choices=("frozen", "finetune"),
        default="frozen",
        help="frozen: features from the store; finetune: train the backbone too",
    )
    p.add_argument("--alignment", default="interp", choices=("interp", "pool", "conv"))
    p.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle-labels", action="store_true", help="train the label-shift control")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other trial setting, e.g. --set hidden=128 --set gates=reference",
    )
    p.add_argument("--output", type=Path, default=Path("outputs"))
    p.add_argument("--name", help="run name; an existing run of this name resumes")
    p.add_argument("--store", type=Path, help="feature store (default: OUTPUT/features)")
    p.add_argument("--weights-dir", type=Path)
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance")
    return p


def run_train_job(args: argparse.Namespace, task: Task) -> int:
    if args.data is not None and not args.features:
        raise SystemExit("--features is required with --data")
    init_ray(args.num_cpus)
    metric = PRIMARY_METRIC[task]
    overrides = dict(
        task=task,
        model=args.model,
        alignment=args.alignment,
        epochs=args.epochs,
        seed=args.seed,
        shuffle_labels=args.shuffle_labels,
        **parse_overrides(args.set),
    )
    control = "control-" if args.shuffle_labels else ""
    # Ray Train resumes a run whose (storage, name) exists: a fresh trial gets a fresh name.
    name = args.name or f"train_{task}-{args.model}-{control}{time.strftime('%Y%m%d-%H%M%S')}"
    storage = (args.output / "runs").resolve()
    if args.mode == "finetune":
        from abaw_ray.train.finetune import build_finetune_trainer, build_frame_index

        root, embedded = resolve_corpus(args.data)
        backbone = (args.features or "mobilenetv3").split(",")[0]
        tiny = args.tiny or embedded
        trial = replace(TrialConfig(), features=store_key(backbone, tiny), **overrides)
        trainer = build_finetune_trainer(
            trial,
            build_frame_index(load_corpus(root), task),
            storage,
            name,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
        )
    else:
        names = args.features.split(",") if args.features else list(EMBEDDED_FEATURES)
        prepared = prepare(
            args.data,
            args.store or args.output / "features",
            names,
            task,
            tiny=True if args.tiny else None,
            weights_dir=args.weights_dir,
            alignments=(args.alignment,),
        )
        trial = replace(
            TrialConfig(), features="+".join(prepared.keys[n] for n in names), **overrides
        )
        trainer = build_trainer(
            trial,
            prepared.bank_ref,
            storage,
            name,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
        )
    result = trainer.fit()
    if not result.best_checkpoints:
        print(f"trial {name}: no epoch finished")
        return 1
    checkpoint, best = result.best_checkpoints[0]
    print(
        f"trial {name}: {args.mode} model {trial.model}, features {trial.features}, "
        f"{args.workers} worker(s){', shuffled-label control' if trial.shuffle_labels else ''}"
    )
    if task == "va":
        print(
            f"  best epoch {best['epoch']}: val CCC {best[metric]:.4f} "
            f"(valence {best['val_ccc_valence']:.4f}, arousal {best['val_ccc_arousal']:.4f})"
        )
    else:
        print(f"  best epoch {best['epoch']}: val macro F1 {best[metric]:.4f}")
    print(f"  checkpoint: {checkpoint.path}")
    return 0
