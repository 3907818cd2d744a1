"""Search efficiency: what each way of searching finds in the same compute.

Each arm searches the same space on the same CPUs (and GPUs) for the same wall-clock budget
(Tune's ``time_budget_s``: at the budget every trial still running is stopped), once per seed
(``--repeats`` seeds, at least 3), the arms of one seed one after the other. Arms:

    default   the job's default: Optuna TPE, ``--scheduler auto`` (on this, the job's own
              Ray instance: rounds, ASHA's rungs)
    tpe-asha  Optuna TPE with ASHA as on a cluster
    random    random search, every trial run to its end or patience (FIFO)
    grid      the paper's protocol: every feature combination x model at default settings,
              with the seed as trial seed, then with the next (``--searcher grid``), FIFO

A search's pick at any time is the trial with the best selection score among those ended;
its score is that trial's held-out score (the videos nothing selects on, as in a job).
Printed per arm, median [min, max] over the seeds: the pick's held-out score at the budget,
the seconds until the pick's held-out score first reached random search's final one (same
seed; ``never`` when it did not), and the trials that ended within the budget.

    python bench/search.py [--corpus realistic] [--tasks va,expr] [--budget 900]
                           [--arms default,random,grid] [--repeats 3] [--store DIR]
                           [--gpus-per-trial 0.25] [--num-cpus 2]

``--gpus-per-trial`` packs trials on the machine's GPUs (0.25: four trials a GPU), so the
trials-per-hour column is the packing's throughput.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import ray
from pairs import spread

from abaw_ray.metrics import score_split
from abaw_ray.runtime import TrialResources, init_ray
from abaw_ray.tasks import OFFICIAL_SCORE
from abaw_ray.train.loop import load_predictions
from abaw_ray.train.prepare import Prepared, prepare
from abaw_ray.tune.search import SearchConfig, build_tuner, collect_outcomes
from abaw_ray.tune.space import SearchSpace, load_search_space

REPO = Path(__file__).resolve().parents[1]
ARMS = {  # name -> (SearchConfig.searcher, SearchConfig.scheduler)
    "default": ("tpe", "auto"),
    "tpe-asha": ("tpe", "asha"),
    "random": ("random", "none"),
    "grid": ("grid", "none"),
}
CORPORA = ("realistic", "embedded")


def held_out_score(prepared: Prepared, checkpoint: str) -> float:
    bank = prepared.bank
    with ray.train.Checkpoint(checkpoint).as_directory() as d:
        preds = load_predictions(d)["holdout"]
    scores = score_split(bank.task, preds, bank.splits["holdout"], bank.labels, bank.valid)
    return scores[OFFICIAL_SCORE[bank.task]]


def search(arm: str, seed: int, args, prepared: Prepared, space: SearchSpace, storage: Path):
    """One search: its picks over time, ``[(seconds, selection score, held-out score)]`` at
    each trial's end, and its trials (started, ended within the budget)."""
    searcher, scheduler = ARMS[arm]
    cfg = SearchConfig(
        space=space,
        storage_path=str(storage),
        name=f"bench-{space.task}-{arm}-{seed}",
        num_samples=1000,  # the budget ends the search
        searcher=searcher,
        scheduler=scheduler,
        time_budget_s=args.budget,
        seed=seed,
        resources=TrialResources(gpus=args.gpus_per_trial),
        local_instance=True,
    )
    start = time.time()
    results = build_tuner(
        cfg, prepared.bank_ref, space.combinations(prepared.keys), verbose=0
    ).fit()
    outcomes = [o for o in collect_outcomes(cfg, results) if o.checkpoint]
    ended = sorted(
        ((o.last.get("timestamp", math.inf) - start, o) for o in outcomes), key=lambda x: x[0]
    )
    picks, best = [], -math.inf
    for t, o in ended:
        if o.score > best:
            best = o.score
            picks.append((t, o.score, held_out_score(prepared, o.checkpoint)))
    within = sum(t <= args.budget - 1 for t, _ in ended)  # Tune's timestamps are whole seconds
    return {"picks": picks, "trials": len(results), "ended": within, "wall": time.time() - start}


def reach(picks: list[tuple[float, float, float]], target: float) -> float:
    """Seconds until the pick's held-out score first reached ``target`` (inf: never)."""
    return next((t for t, _, held in picks if held >= target - 1e-12), math.inf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="realistic", choices=CORPORA)
    p.add_argument("--tasks", default="va,expr", help="comma-separated, of va, expr, au")
    p.add_argument("--arms", default="default,random,grid", help=f"of {', '.join(ARMS)}")
    p.add_argument("--budget", type=float, default=900.0, help="seconds per search")
    p.add_argument("--repeats", type=int, default=3, help="seeds 0, 1, ... (at least 3)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="0.25: four trials a GPU")
    p.add_argument("--store", type=Path, help="feature store (default: a temporary folder)")
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figure printed is a median)")
    arms = args.arms.split(",")
    if bad := [a for a in arms if a not in ARMS]:
        p.error(f"--arms: unknown {bad}; valid: {', '.join(ARMS)}")
    tasks = args.tasks.split(",")
    spaces = {}
    for task in tasks:
        path = REPO / "search_spaces" / f"{args.corpus}_{task}.yaml"
        if not path.exists():
            p.error(f"--tasks: no space {path.name} for task {task!r}; valid: va, expr, au")
        spaces[task] = load_search_space(path)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "features"
        for task, space in spaces.items():
            runs: dict[str, list[dict]] = {arm: [] for arm in arms}
            for seed in range(args.repeats):
                for arm in arms:
                    # A fresh Ray instance per search: nothing the previous one left running
                    # (trials cut by the budget) may hold resources the next one needs.
                    init_ray(num_cpus=args.num_cpus)
                    if args.gpus_per_trial and not ray.cluster_resources().get("GPU"):
                        p.error("--gpus-per-trial needs a GPU, and this machine has none")
                    prepared = prepare(
                        None,
                        store,
                        space.extractors,
                        task,
                        alignments=space.alignments(),
                        # a job's default --holdout, drawn with seed 0 for every arm and seed
                        holdout=SearchConfig.holdout,
                        realistic=args.corpus == "realistic",
                    )
                    run = search(arm, seed, args, prepared, space, Path(tmp) / "runs")
                    ray.shutdown()
                    runs[arm].append(run)
                    t, sel, held = run["picks"][-1] if run["picks"] else (math.nan,) * 3
                    print(
                        f"[{task} seed {seed}] {arm:<9} {run['ended']:>3} trials ended "
                        f"({run['trials']} started) in {run['wall']:.0f} s; pick at {t:.0f} s: "
                        f"selection {sel:.4f}, held out {held:.4f}; picks (s, held out): "
                        + ", ".join(f"{a:.0f} {c:.4f}" for a, _, c in run["picks"]),
                        flush=True,
                    )
            print_table(task, args, runs)


def print_table(task: str, args, runs: dict[str, list[dict]]) -> None:
    score = {"va": "CCC", "expr": "macro F1", "au": "mean F1"}[task]
    finals = {
        arm: [r["picks"][-1][2] if r["picks"] else -math.inf for r in rs]
        for arm, rs in runs.items()
    }
    print(
        f"\n{task} on the {args.corpus} corpus, {args.num_cpus} CPUs, {args.gpus_per_trial:g} "
        f"GPU a trial, {args.budget:.0f} s a search; median [min, max] over {args.repeats} seeds"
    )
    header = f"  {'arm':<10}{'held-out ' + score:>26}"
    if "random" in runs:
        header += f"{'s to random final':>24}"
    print(header + f"{'trials ended':>18}{'trials/hour':>20}")
    for arm, rs in runs.items():
        line = f"  {arm:<10}{spread(finals[arm], '.4f'):>26}"
        if "random" in runs:
            targets = finals["random"]
            line += f"{spread([reach(r['picks'], g) for r, g in zip(rs, targets)], '.0f'):>24}"
        per_hour = [r["ended"] / r["wall"] * 3600 for r in rs]
        line += f"{spread([r['ended'] for r in rs], '.0f'):>18}{spread(per_hour, '.0f'):>20}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
