"""A search's cost: resources held x wall time per trial, totals, best score against hours."""

from __future__ import annotations

from pathlib import Path

import pytest

from abaw_ray.runtime import TrialResources
from abaw_ray.tune.cost import best_by_hours, cost_summary, trial_costs
from abaw_ray.tune.search import SearchConfig, TrialOutcome
from abaw_ray.tune.space import load_search_space

SPACE = Path(__file__).parent / "data" / "small_va.yaml"


def _outcome(trial_id: str, seconds: float, ended: float, score: float | None) -> TrialOutcome:
    best = None if score is None else {"_score": score}
    last = {"time_total_s": seconds, "timestamp": ended}
    return TrialOutcome(trial_id, {}, "done", best=best, last=last)


def test_costs_are_resources_times_wall_time_in_the_order_trials_ended():
    cfg = SearchConfig(
        load_search_space(SPACE),
        "/tmp",
        "s",
        resources=TrialResources(workers=2, gpus=0.25, cpus_per_worker=1.5),
    )
    # Ranked by score (as collect_outcomes returns them), ended in another order.
    outcomes = [
        _outcome("b", 1800.0, ended=300.0, score=0.8),
        _outcome("a", 3600.0, ended=100.0, score=0.5),
        _outcome("c", 720.0, ended=200.0, score=None),  # no checkpoint
    ]
    costs = trial_costs(cfg, outcomes)
    assert [c.trial_id for c in costs] == ["a", "c", "b"]
    assert [c.cpu_seconds for c in costs] == [3 * 3600.0, 3 * 720.0, 3 * 1800.0]
    assert [c.gpu_seconds for c in costs] == [900.0, 180.0, 450.0]
    # GPU-hours spent after each trial: 0.25, 0.30, 0.425; best so far 0.5, 0.5, 0.8.
    curve = best_by_hours(costs, "gpu")
    assert [h for h, _ in curve] == pytest.approx([0.25, 0.30, 0.425])
    assert [b for _, b in curve] == [0.5, 0.5, 0.8]
    summary = cost_summary(costs)
    assert summary["cost_cpu_hours"] == pytest.approx(3 * (3600 + 720 + 1800) / 3600)
    assert summary["cost_gpu_hours"] == pytest.approx(0.425)
    assert summary["cost_gpu_hours_to_best"] == pytest.approx(0.425)
    assert summary["cost_trials"] == 3


def test_a_cpu_search_counts_cpu_hours_to_its_best():
    cfg = SearchConfig(load_search_space(SPACE), "/tmp", "s")  # 1 worker, 1 CPU, no GPU
    outcomes = [_outcome("a", 360.0, 1.0, 0.7), _outcome("b", 720.0, 2.0, 0.6)]
    summary = cost_summary(trial_costs(cfg, outcomes))
    assert summary["cost_gpu_hours"] == 0.0
    assert summary["cost_cpu_hours_to_best"] == pytest.approx(0.1)  # reached by the first
    assert summary["cost_cpu_hours"] == pytest.approx(0.3)
