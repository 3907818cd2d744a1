"""Search efficiency: ASHA early stopping against none, at the same wall-clock budget.

Both searches run on the embedded corpus with the same space, seed and resources, one after
the other. Printed: trials finished per hour, the best val CCC, and the wall time until the
best trial so far first reached the target.

    python bench/search.py [--budget 180] [--target 0.6] [--space search_spaces/va.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from abaw_ray.train.prepare import prepare
from abaw_ray.tune.search import SearchConfig, build_tuner, collect_outcomes
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[1]


def run(scheduler: str, args, prepared, space, storage: Path) -> dict:
    cfg = SearchConfig(
        space=space,
        storage_path=str(storage),
        name=f"bench-{scheduler}",
        num_samples=1000,
        scheduler=scheduler,
        time_budget_s=args.budget,
        seed=args.seed,
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
        "reach": reach,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=180.0, help="seconds per search")
    p.add_argument("--target", type=float, default=0.6)
    p.add_argument("--space", type=Path, default=REPO / "search_spaces" / "va.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()
    space = load_search_space(args.space)
    alignments = next((q.args for q in space.parameters if q.name == "alignment"), ("interp",))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in ("asha", "none"):
            # A fresh Ray instance per search: nothing the first one left running (trials
            # cut by the time budget) may hold resources the second one needs.
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
            prepared = prepare(
                None, Path(tmp) / "features", space.extractors, space.task, alignments=alignments
            )
            rows[scheduler] = run(scheduler, args, prepared, space, Path(tmp) / "runs")
            ray.shutdown()
    print(
        f"\nsearch efficiency on the embedded corpus, {args.num_cpus} CPUs, budget "
        f"{args.budget:.0f} s each, target val CCC {args.target}"
    )
    print(
        f"  {'scheduler':<10}{'trials':>7}{'trials/hour':>13}{'best val CCC':>14}"
        f"{'time to target':>16}"
    )
    for name, r in rows.items():
        reach = f"{r['reach']:.0f} s" if r["reach"] is not None else "not reached"
        print(f"  {name:<10}{r['trials']:>7}{r['per_hour']:>13.0f}{r['best']:>14.4f}{reach:>16}")


if __name__ == "__main__":
    main()
