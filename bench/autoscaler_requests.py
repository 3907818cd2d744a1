"""What a search leaves asking the autoscaler for once it has ended.

Each Ray Train controller registers its workers' resources with Ray's autoscaling coordinator
(the actor an autoscaler reads Ray Data's and Ray Train's demands from). The requests expire
180 s after their last renewal; a controller withdraws its own as it shuts down. Tune ends a
trial by ending its actor, which owns the trial's controller: a controller still running then
is stopped with it and withdraws nothing, and on an autoscaling cluster its request keeps (or
launches) nodes for a trial that has ended. The search reports a trial's last result only once
its trainer has shut down, and withdraws the request of a trial it stops mid-run
(``abaw_ray.tune.search.run_trial``, ``stop_relay``).

Runs searches of ``--trials`` trials (the embedded VA space, ``--epochs`` epochs, the default
scheduler of a job's own instance: ASHA in rounds, which stops some trials mid-run) on a local
Ray instance and prints, after each, the Train requests the coordinator still holds and the
seconds left until they expire. The coordinator's state is read through Ray internals
(``__ray_call__``, ``_ongoing_reqs``), as no public API lists it.

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

from abaw_ray.tasks import TRIAL_FINISHED
from abaw_ray.train.trainer import AUTOSCALING_COORDINATOR, train_request_id
from abaw_ray.tune.search import SearchConfig, build_tuner


def train_requests() -> dict[str, float]:
    """Each Train request the coordinator holds: seconds until it expires."""
    try:
        coordinator = ray.get_actor(
            AUTOSCALING_COORDINATOR[0], namespace=AUTOSCALING_COORDINATOR[1]
        )
    except ValueError:
        return {}  # none was ever made

    def held(self) -> dict[str, float]:
        return {k: v.expiration_time for k, v in self._ongoing_reqs.items()}

    now = time.time()
    expiring = ray.get(coordinator.__ray_call__.remote(held))
    return {k: t - now for k, t in expiring.items() if k.startswith(train_request_id(""))}


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
            grid = build_tuner(cfg, prepared.bank_ref, combos, verbose=0).fit()
            finished = sum(bool(r.metrics.get(TRIAL_FINISHED)) for r in grid)
            after = {k: s for k, s in train_requests().items() if k not in before}
            left.append(len(after))
            expiry.extend(after.values())
            print(
                f"search {i}: {len(after)} of {args.trials} trials' left ({finished} ran to "
                f"their last epoch, stopped mid-run: {len(grid) - finished})",
                flush=True,
            )
    print(
        f"\nafter a search of {args.trials} trials ({args.epochs} epochs, ASHA in rounds): "
        f"Train requests left {spread([float(n) for n in left], '.0f')} "
        f"(median [min, max] of {args.repeats} searches)"
    )
    if expiry:
        print(f"  seconds until they expire: {spread(expiry, '.0f')}")


if __name__ == "__main__":
    main()
