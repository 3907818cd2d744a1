"""What a search cost: each trial's resources held times the wall time it held them, the
search's total, and the best selection score against the hours spent (trials in the order they
ended)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from abaw_ray.tune.search import SearchConfig, TrialOutcome


@dataclass(frozen=True)
class TrialCost:
    trial_id: str
    seconds: float  # wall time Tune measured, from the trial's start to its last report
    cpus: float  # held for all of it: workers x CPUs per worker
    gpus: float
    ended: float  # unix time of its last report
    score: float  # its best selection score (-inf without a checkpoint)

    @property
    def cpu_seconds(self) -> float:
        return self.cpus * self.seconds

    @property
    def gpu_seconds(self) -> float:
        return self.gpus * self.seconds


def trial_costs(cfg: SearchConfig, outcomes: Sequence[TrialOutcome]) -> list[TrialCost]:
    """Every trial's cost, in the order the trials ended. A trial's resources are the
    search's (``resources``: workers x CPUs a worker, the trial's GPUs)."""
    cpus = cfg.resources.workers * cfg.resources.cpus_per_worker
    costs = [
        TrialCost(
            o.trial_id,
            float(o.last.get("time_total_s", 0.0)),
            cpus,
            cfg.resources.gpus,
            float(o.last.get("timestamp", 0.0)),
            o.score,
        )
        for o in outcomes
    ]
    return sorted(costs, key=lambda c: (c.ended, c.trial_id))


def cost_unit(costs: Sequence[TrialCost]) -> str:
    """ "gpu" where the trials held GPUs, else "cpu": what their hours are counted in."""
    return "gpu" if any(c.gpus for c in costs) else "cpu"


def best_by_hours(costs: Sequence[TrialCost], unit: str) -> list[tuple[float, float]]:
    """(hours spent so far, best score so far) after each trial, trials in the order they
    ended; ``unit`` is "gpu" or "cpu"."""
    spent, best, curve = 0.0, float("-inf"), []
    for c in costs:
        spent += (c.gpu_seconds if unit == "gpu" else c.cpu_seconds) / 3600
        best = max(best, c.score)
        curve.append((spent, best))
    return curve


def cost_summary(costs: Sequence[TrialCost]) -> dict[str, float]:
    """The search's totals, and the hours after which it held its best score (in GPU-hours
    where trials held GPUs, else CPU-hours)."""
    unit = cost_unit(costs)
    curve = best_by_hours(costs, unit)
    best = max((b for _, b in curve), default=float("-inf"))
    reached = next((h for h, b in curve if b == best), 0.0)
    return {
        "cost_trials": float(len(costs)),
        "cost_cpu_hours": sum(c.cpu_seconds for c in costs) / 3600,
        "cost_gpu_hours": sum(c.gpu_seconds for c in costs) / 3600,
        f"cost_{unit}_hours_to_best": reached,
    }
