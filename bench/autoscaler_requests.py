"""What a search leaves asking the autoscaler for once it has ended.

Each Ray Train controller registers its workers' resources with Ray's autoscaling coordinator
(the actor an autoscaler reads Ray Data's and Ray Train's demands from). The requests expire
180 s after their last renewal; a controller cancels its own as it shuts down. Tune ends a
trial by ending its actor, which owns the trial's controller: a controller still running then
is stopped with it and cancels nothing. On an autoscaling cluster such a request keeps (or
launches) nodes for a trial that has ended.

Runs searches of ``--trials`` trials (the embedded VA space, ``--epochs`` epochs, every trial
to its end) on a local Ray instance and prints, after each, the Train requests the coordinator
still holds and the seconds left until they expire. The coordinator's state is read through
Ray internals (``__ray_call__``, ``_ongoing_reqs``), as no public API lists it.

    python bench/autoscaler_requests.py [--repeats 3] [--trials 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
from embedded_search import embedded_va
from pairs import spread

from abaw_ray.tune.search import SearchConfig, build_tuner

COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # its name, its namespace


def train_requests() -> dict[str, float]:
    """Each Train request the coordinator holds: seconds until it expires."""
    try:
        coordinator = ray.get_actor(COORDINATOR[0], namespace=COORDINATOR[1])
    except ValueError:
        return {}  # none was ever made

    def held(self) -> dict[str, float]:
        return {k: v.expiration_time for k, v in self._ongoing_reqs.items()}

    now = time.time()
    expiring = ray.get(coordinator.__ray_call__.remote(held))
    return {k: t - now for k, t in expiring.items() if k.startswith("train-")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="searches (at least 3)")
    p.add_argument("--trials", type=int, default=3, help="trials of each search")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each trial")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the Ray instance")
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figures printed are medians)")
    left: list[int] = []
    expiry: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        embedded_va(Path(tmp), args.epochs, args.num_cpus) as (space, prepared, combos),
    ):
        for i in range(args.repeats):
            before = set(train_requests())
            cfg = SearchConfig(
                space,
                str(Path(tmp) / "runs"),
                f"search-{i}",
                num_samples=args.trials,
                local_instance=True,
            )
            build_tuner(cfg, prepared.bank_ref, combos, verbose=0).fit()
            after = {k: s for k, s in train_requests().items() if k not in before}
            left.append(len(after))
            expiry.extend(after.values())
            print(f"search {i}: {len(after)} of {args.trials} trials' left", flush=True)
    print(
        f"\nafter a search of {args.trials} trials run to their end ({args.epochs} epochs): "
        f"Train requests left {spread([float(n) for n in left], '.0f')} "
        f"(median [min, max] of {args.repeats} searches)"
    )
    if expiry:
        print(f"  seconds until they expire: {spread(expiry, '.0f')}")


if __name__ == "__main__":
    main()
