"""Train one VA trial (a Ray Train TorchTrainer) and print its scores.

    python jobs/train_va.py [--data ROOT] [--tiny] --model mfn \
        --features clip_large,wavlm_large [--workers 2]

Without --data: the embedded corpus with its tiny/model-free features. Missing features are
extracted first. --shuffle-labels trains the control (labels shifted within each training
video) to show what a model learns from nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import ray
import yaml

from abaw_ray.train.loop import TrialConfig
from abaw_ray.train.prepare import EMBEDDED_FEATURES, prepare
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path)
    p.add_argument("--tiny", action="store_true", help="tiny random extractors on any corpus")
    p.add_argument("--model", default="mfn")
    p.add_argument(
        "--features", help=f"comma-separated (embedded default: {','.join(EMBEDDED_FEATURES)})"
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
    args = p.parse_args(argv)
    if args.data is not None and not args.features:
        p.error("--features is required with --data")
    names = args.features.split(",") if args.features else list(EMBEDDED_FEATURES)

    ray.init(num_cpus=args.num_cpus, ignore_reinit_error=True)
    prepared = prepare(
        args.data,
        args.store or args.output / "features",
        names,
        "va",
        tiny=True if args.tiny else None,
        weights_dir=args.weights_dir,
        alignments=(args.alignment,),
    )
    trial = replace(
        TrialConfig(),
        features="+".join(prepared.keys[n] for n in names),
        model=args.model,
        alignment=args.alignment,
        epochs=args.epochs,
        seed=args.seed,
        shuffle_labels=args.shuffle_labels,
        **parse_overrides(args.set),
    )
    # Ray Train resumes a run whose (storage, name) exists: a fresh trial gets a fresh name.
    name = args.name or (
        f"train_va-{trial.model}-{'control-' if trial.shuffle_labels else ''}"
        f"{time.strftime('%Y%m%d-%H%M%S')}"
    )
    trainer = build_trainer(
        trial,
        prepared.bank_ref,
        (args.output / "runs").resolve(),
        name,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
    )
    result = trainer.fit()
    best = result.best_checkpoints[0][1] if result.best_checkpoints else result.metrics
    print(
        f"trial {name}: model {trial.model}, features {trial.features}, "
        f"{args.workers} worker(s){', shuffled-label control' if trial.shuffle_labels else ''}"
    )
    print(
        f"  best epoch {best['epoch']}: val CCC {best['val_ccc']:.4f} "
        f"(valence {best['val_ccc_valence']:.4f}, arousal {best['val_ccc_arousal']:.4f})"
    )
    print(f"  checkpoint: {result.best_checkpoints[0][0].path if result.best_checkpoints else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
