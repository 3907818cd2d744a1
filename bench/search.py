"""Search efficiency: schedulers at the same wall-clock budget (``--schedulers``: ASHA early
stopping against none by default; ``rounds`` is what a job's own instance runs).

Each scheduler's search runs on the embedded corpus with the same space, seed and resources,
one after the other, once per seed (``--repeats`` seeds, at least 3). Printed per scheduler:
the median over seeds, with [min, max], of trials finished per hour, the best val CCC, and the
wall time until the best trial so far first reached the target (a seed that never reaches it
counts as never).

    python bench/search.py [--budget 180] [--target 0.6] [--repeats 3] [--space FILE]
                           [--gpus-per-trial 0.25] [--schedulers asha,rounds,none]

``--gpus-per-trial`` packs trials on the machine's GPUs (0.25: four trials a GPU), so the
trials-per-hour column is the packing's throughput.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from abaw_ray.runtime import TrialResources, init_ray
from abaw_ray.train.prepare import prepare
from abaw_ray.tune.search import SearchConfig, build_tuner, collect_outcomes
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[1]
SCHEDULERS = ("asha", "rounds", "none")  # SearchConfig.scheduler's, but auto


def run(scheduler: str, seed: int, args, prepared, space, storage: Path) -> dict:
    cfg = SearchConfig(
        space=space,
        storage_path=str(storage),
        name=f"bench-{scheduler}-{seed}",
        num_samples=1000,
        scheduler=scheduler,
        time_budget_s=args.budget,
        seed=seed,
        resources=TrialResources(gpus=args.gpus_per_trial),
        local_instance=True,
    )
    start = time.time()
    results = build_tuner(cfg, prepared.bank_ref, space.combinations(prepared.keys)).fit()
    wall = time.time() - start
    outcomes = [o for o in collect_outcomes(cfg, results) if o.best]
    finished = sorted(
        (o.last.get("timestamp", start + wall) - start, o.best[cfg.metric]) for o in outcomes
    )
    best_so_far = np.maximum.accumulate([s for _, s in finished]) if finished else []
    reach = next((t for (t, _), b in zip(finished, best_so_far) if b >= args.target), None)
    return {
        "trials": len(results),
        "with_checkpoint": len(outcomes),
        "wall": wall,
        "per_hour": len(results) / wall * 3600,
        "best": float(best_so_far[-1]) if len(best_so_far) else float("nan"),
        "reach": reach if reach is not None else math.inf,
    }


def spread(xs: list[float], fmt: str) -> str:
    def one(x: float) -> str:
        return "never" if math.isinf(x) else format(x, fmt)

    return f"{one(statistics.median(xs))} [{one(min(xs))}, {one(max(xs))}]"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=180.0, help="seconds per search")
    p.add_argument("--target", type=float, default=0.6)
    p.add_argument("--space", type=Path, default=REPO / "search_spaces" / "embedded_va.yaml")
    p.add_argument("--repeats", type=int, default=3, help="seeds 0, 1, ... (at least 3)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="0.25: four trials a GPU")
    p.add_argument(
        "--schedulers",
        default="asha,none",
        help="comma-separated, of asha, rounds, none (each a search per seed, interleaved)",
    )
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figure printed is a median)")
    schedulers = args.schedulers.split(",")
    if bad := [x for x in schedulers if x not in SCHEDULERS]:
        p.error(f"--schedulers: unknown {bad}; valid: {', '.join(SCHEDULERS)}")
    space = load_search_space(args.space)
    alignments = space.alignments()
    rows: dict[str, list[dict]] = {name: [] for name in schedulers}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            for scheduler in rows:
                # A fresh Ray instance per search: nothing the previous one left running
                # (trials cut by the time budget) may hold resources the next one needs.
                init_ray(num_cpus=args.num_cpus)
                if args.gpus_per_trial and not ray.cluster_resources().get("GPU"):
                    p.error("--gpus-per-trial needs a GPU, and this machine has none")
                prepared = prepare(
                    None,
                    Path(tmp) / "features",
                    space.extractors,
                    space.task,
                    alignments=alignments,
                )
                rows[scheduler].append(
                    run(scheduler, seed, args, prepared, space, Path(tmp) / "runs")
                )
                ray.shutdown()
    print(
        f"\nsearch efficiency on the embedded corpus, {args.num_cpus} CPUs, "
        f"{args.gpus_per_trial:g} GPU a trial, budget "
        f"{args.budget:.0f} s each, target val CCC {args.target}; median [min, max] over "
        f"{args.repeats} seeds"
    )
    print(f"  {'scheduler':<10}{'trials/hour':>22}{'best val CCC':>28}{'time to target (s)':>24}")
    for name, runs in rows.items():
        per_hour = spread([r["per_hour"] for r in runs], ".0f")
        best = spread([r["best"] for r in runs], ".4f")
        reach = spread([r["reach"] for r in runs], ".0f")
        print(f"  {name:<10}{per_hour:>22}{best:>28}{reach:>24}")


if __name__ == "__main__":
    main()
