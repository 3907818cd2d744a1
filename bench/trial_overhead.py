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

Then the start of a Ray Train trial, process by process (Linux: read from /proc, where the
instance is this machine's): when each Ray process the trial starts comes up, a new process
(``spawned``) or an idle Ray worker taken, and when it runs its actor (``named``: Ray renames
the process once the actor's class has been imported and its constructor runs). And the
corpus a trial needs for the part that is not training to fall under 20 %: epochs four times
as long, together, as what is not training (which a larger corpus leaves about as it is).

    python bench/trial_overhead.py [--repeats 3] [--epochs 16] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch
from embedded_search import embedded_va
from pairs import spread
from ray import tune

from abaw_ray.train.loop import TrialConfig, WorkerContext, train_epochs
from abaw_ray.tune.search import SearchConfig, build_tuner, stop_flag_name

PARTS = ("start", "fetch", "epochs", "checkpoint and report", "the rest")
POLL_S = 0.05  # how often ProcessWatch reads /proc
TARGET_SHARE = 0.20  # the goal: at most this share of a trial's wall time not training
LOOP = "the loop's first line"  # the timeline's last step, from the loop's own clock


class ProcessWatch:
    """Ray processes that appear while it runs, read from /proc every ``POLL_S``: for each, when
    it was first seen and when it first carried an actor's or task's name (``ray::Name``)."""

    def __init__(self) -> None:
        # Processes up before it began: idle Ray workers may yet take an actor; the rest
        # (Ray's own, an earlier trial's still ending) are not the trial's.
        self.before = set(self._pids())
        self.ignored = {p for p in self.before if self._name(p) not in (None, "IDLE")}
        self.spawned: dict[str, float] = {}
        self.named: dict[str, tuple[float, str]] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pids() -> list[str]:
        return [p for p in os.listdir("/proc") if p.isdigit()]

    @staticmethod
    def _name(pid: str) -> str | None:
        """The Ray name a process carries (``ray::Name``; a trial's stop flag as its class),
        None when it is gone or not a Ray worker."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name = re.match(r"ray::([\w-]+)", f.read().decode(errors="replace"))
        except OSError:
            return None
        if name is None:
            return None
        return "StopFlag" if name[1].startswith(stop_flag_name("")) else name[1]

    def _run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            for pid in self._pids():
                if pid in self.named or pid in self.ignored:
                    continue
                if pid not in self.before:
                    self.spawned.setdefault(pid, now)
                name = self._name(pid)
                if name not in (None, "IDLE"):
                    self.named[pid] = (now, name)
            time.sleep(POLL_S)

    def __enter__(self) -> ProcessWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def timeline(self, since: float) -> dict[str, tuple[float | None, float]]:
        """Each Ray name's first process: (spawned, named) in seconds after ``since``; spawned
        is None for an idle worker that was up before the watch began."""
        first: dict[str, tuple[float | None, float]] = {}
        for pid, (at, name) in sorted(self.named.items(), key=lambda kv: kv[1][0]):
            spawned = self.spawned.get(pid)
            first.setdefault(name, (None if spawned is None else spawned - since, at - since))
        return first


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


def run_train(cfg: SearchConfig, prepared, combos: list[str]) -> tuple[dict, dict, dict]:
    tuner = build_tuner(cfg, prepared.bank_ref, combos, verbose=0)
    with ProcessWatch() as watch:
        started = time.time()
        (result,) = tuner.fit()
        ended = time.time()
    if result.error:
        raise RuntimeError(f"the train variant failed: {result.error}")
    timeline = watch.timeline(started)
    timeline[LOOP] = (None, result.metrics["worker_started_at"] - started)
    return parts(result.metrics, started, ended), dict(result.config), timeline


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
    rows: dict[str, list[dict]] = {"train": [], "plain": []}
    timelines: list[dict[str, tuple[float | None, float]]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        embedded_va(Path(tmp), args.epochs, args.num_cpus) as (space, prepared, combos),
    ):
        for i in range(args.repeats):
            cfg = SearchConfig(
                space, str(Path(tmp) / "runs"), f"train-{i}", num_samples=1, local_instance=True
            )
            train, config, timeline = run_train(cfg, prepared, combos)
            rows["train"].append(train)
            timelines.append(timeline)
            rows["plain"].append(run_plain(config, prepared, Path(tmp) / "runs", f"plain-{i}"))
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
    for v, runs in rows.items():
        # What is not training stays with a larger corpus (processes, reports); epochs grow.
        scale = [
            (r["wall"] - r["epochs"]) * (1 - TARGET_SHARE) / TARGET_SHARE / r["epochs"]
            for r in runs
        ]
        print(
            f"  under {TARGET_SHARE:.0%} not training, {v}: epochs {spread(scale)} times as long "
            f"as these (a corpus that much larger)"
        )
    print_timeline(timelines)


def print_timeline(timelines: list[dict[str, tuple[float | None, float]]]) -> None:
    """The Ray Train trial's processes in the order they run their actors: seconds after
    ``Tuner.fit``, median [min, max] over the trials that started each."""
    names = sorted(
        {n for t in timelines for n in t},
        key=lambda n: statistics.median(t[n][1] for t in timelines if n in t),
    )
    print("\n  the Ray Train trial's start, process by process (s after Tuner.fit)")
    print(f"  {'process':<30}{'spawned':>22}{'named':>22}  trials")
    for name in names:
        seen = [t[name] for t in timelines if name in t]
        spawned = [s for s, _ in seen if s is not None]
        cell = spread(spawned) if spawned else "" if name == LOOP else "(idle worker)"
        print(f"  {name:<30}{cell:>22}{spread([n for _, n in seen]):>22}  {len(seen)}")


if __name__ == "__main__":
    main()
