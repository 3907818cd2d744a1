"""A search trial's wall time, decomposed, and what Ray Train costs against a plain Tune
function trainable running the same loop.

Two variants of one trial (the embedded VA space's settings at a fixed draw, every epoch run:
``patience`` = ``epochs``), each a ``Tuner.fit`` of one trial in the same Ray instance, run
interleaved (train, plain, train, plain ...) so that load shifts both:
- train: the search's own trial (``build_tuner``: Optuna, the paced limiter, ``run_trial``
  driving a Ray Train ``TorchTrainer`` of one worker);
- plain: the same ``train_epochs`` loop inside a Tune function trainable, no Ray Train.

Each trial's wall time (``Tuner.fit``), in parts, from the loop's own figures
(``train_epochs``' ``timing``):
- start: ``Tuner.fit`` to the loop's first line (Tune's controller, the trial's actor; train:
  its controller and worker group);
- fetch: the bank's shards fetched from the object store;
- epochs: training and scoring the selection videos;
- checkpoint and report: every epoch's but the last;
- the rest: the last report, the trial's end and Tune's.

Printed: each part's median [min, max] over ``--repeats`` pairs, the share that is not
training, and the median [min, max] of the pairs' wall-time ratios (train / plain). Torch
runs one thread in each variant (Ray sets it from the one CPU each asks for).

    python bench/trial_overhead.py [--repeats 3] [--epochs 16] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from pairs import spread
from ray import tune

from abaw_ray.runtime import init_ray
from abaw_ray.train.loop import TrialConfig, WorkerContext, train_epochs
from abaw_ray.train.prepare import prepare
from abaw_ray.tune.search import SearchConfig, build_tuner
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "embedded_va.yaml"
PARTS = ("start", "fetch", "epochs", "checkpoint and report", "the rest")


def plain_trial(config: dict[str, Any], bank_ref: list[ray.ObjectRef]) -> None:
    """``train_loop_per_worker``'s work in a Tune function trainable: the same fetch, the same
    loop, reports (and checkpoints) straight to Tune."""
    started = time.time()
    trial = TrialConfig.from_dict(config)
    index = ray.get(bank_ref[0])
    bank = index.fetch(index.variants_for(trial.feature_keys, trial.alignment))
    timing = {"worker_started_at": started, "time_fetch_s": time.time() - started}

    def report(metrics: dict[str, float], folder: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    ctx = WorkerContext(0, 1, torch.device("cpu"), lambda m: m, None, report, lambda: False)
    train_epochs(trial, bank, ctx, timing=timing)


def parts(last: dict[str, float], fit_started: float, fit_ended: float) -> dict[str, float]:
    loop = last["time_fetch_s"] + last["time_epochs_s"] + last["time_checkpoint_s"]
    return {
        "start": last["worker_started_at"] - fit_started,
        "fetch": last["time_fetch_s"],
        "epochs": last["time_epochs_s"],
        "checkpoint and report": last["time_checkpoint_s"],
        "the rest": fit_ended - last["worker_started_at"] - loop,
        "wall": fit_ended - fit_started,
    }


def run_train(cfg: SearchConfig, prepared, combos: list[str]) -> tuple[dict, dict]:
    started = time.time()
    (result,) = build_tuner(cfg, prepared.bank_ref, combos, verbose=0).fit()
    ended = time.time()
    if result.error:
        raise RuntimeError(f"the train variant failed: {result.error}")
    return parts(result.metrics, started, ended), dict(result.config)


def run_plain(config: dict, prepared, storage: Path, name: str) -> dict:
    trainable = tune.with_resources(
        tune.with_parameters(plain_trial, bank_ref=[prepared.bank_ref]), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    started = time.time()
    (result,) = tuner.fit()
    ended = time.time()
    if result.error:
        raise RuntimeError(f"the plain variant failed: {result.error}")
    return parts(result.metrics, started, ended)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="pairs of trials (at least 3)")
    p.add_argument("--epochs", type=int, default=16, help="epochs of each trial (the space's)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the Ray instance")
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figures printed are medians)")
    space = load_search_space(SPACE).with_value("epochs", args.epochs)
    space = space.with_value("patience", args.epochs)  # every epoch runs, in both variants
    rows: dict[str, list[dict]] = {"train": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        init_ray(num_cpus=args.num_cpus)
        try:
            prepared = prepare(
                None, Path(tmp) / "features", space.extractors, "va", alignments=space.alignments()
            )
            combos = space.combinations(prepared.keys)
            for i in range(args.repeats):
                cfg = SearchConfig(
                    space, str(Path(tmp) / "runs"), f"train-{i}", num_samples=1, local_instance=True
                )
                train, config = run_train(cfg, prepared, combos)
                rows["train"].append(train)
                rows["plain"].append(run_plain(config, prepared, Path(tmp) / "runs", f"plain-{i}"))
        finally:
            ray.shutdown()
    print(
        f"\na trial of the embedded VA search ({config.get('model')}, {config.get('features')}, "
        f"{args.epochs} epochs), {args.num_cpus} CPUs; seconds, median [min, max] over "
        f"{args.repeats} interleaved pairs"
    )
    print(f"  {'part':<24}{'Ray Train trial':>26}{'plain Tune trainable':>26}")
    for part in (*PARTS, "wall"):
        cells = [spread([r[part] for r in rows[v]]) for v in rows]
        print(f"  {part:<24}{cells[0]:>26}{cells[1]:>26}")
    for v, runs in rows.items():
        share = [1 - r["epochs"] / r["wall"] for r in runs]
        print(f"  not training, {v}: {spread([100 * s for s in share], '.0f')} % of the wall time")
    ratios = [t["wall"] / q["wall"] for t, q in zip(rows["train"], rows["plain"])]
    print(f"  wall time, Ray Train / plain: {spread(ratios, '.2f')}")


if __name__ == "__main__":
    main()
