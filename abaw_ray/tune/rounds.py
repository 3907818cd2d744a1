"""A search in rounds (``--scheduler rounds``): the same seed prints the same trials table.

Side by side, trials end in an order the machine decides. TPE then proposes from whichever
results are in, and ASHA stops a trial against whichever results reached its rung first, so
two runs with one seed can differ. In rounds of ``size`` trials, the searcher hears of a round
only once all of its trials have ended (Tune's batched ``ConcurrencyLimiter``), and a trial is
stopped at a rung only against the trials of earlier rounds, whose results there are final. The
price: a round's free slots stay idle until its last trial ends, and the first round runs
every trial to its end (nothing earlier to compare with).

The rung records live in the limiter, whose state Tune saves with the searcher's, so a resumed
search compares against the same records.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter


def rung_epochs(grace_period: int, max_t: int, reduction_factor: int) -> list[int]:
    """ASHA's rungs: ``grace_period`` epochs times powers of the reduction factor, below
    ``max_t`` (a trial that reaches ``max_t`` has ended anyway)."""
    rungs, epoch = [], grace_period
    while epoch < max_t:
        rungs.append(epoch)
        epoch *= reduction_factor
    return rungs


class RoundLimiter(ConcurrencyLimiter):
    """The searcher in rounds of ``size`` trials, and the scores each trial reached at each
    rung with the round it ran in."""

    def __init__(self, searcher: Any, size: int, rungs: list[int], reduction_factor: int):
        super().__init__(searcher, max_concurrent=max(1, size), batch=True)
        self.rungs = rungs
        self.reduction_factor = reduction_factor
        self.round = 0  # rounds that have ended
        self.round_of: dict[str, int] = {}  # trial id -> the round it runs in
        self.records: dict[int, dict[str, float]] = {r: {} for r in rungs}  # rung -> id -> score

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if trial_id in self.live_trials:
            self.round_of[trial_id] = self.round
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        was_live = trial_id in self.live_trials
        super().on_trial_complete(trial_id, result=result, error=error)
        if was_live and not self.live_trials:  # the round's last trial: the searcher heard all
            self.round += 1

    def should_stop(self, trial_id: str, epoch: int, score: float) -> bool:
        """Record ``score`` at the highest rung ``epoch`` reaches that the trial has not passed
        yet; stop the trial if it is below the (1 - 1/reduction factor) quantile of the earlier
        rounds' scores there (ASHA's cutoff). Only the first report at a rung counts."""
        own = self.round_of.get(trial_id)
        for rung in reversed(self.rungs):
            if epoch < rung:
                continue
            recorded = self.records[rung]
            if trial_id in recorded or own is None or not np.isfinite(score):
                return False
            earlier = [s for t, s in recorded.items() if self.round_of.get(t, own) < own]
            recorded[trial_id] = float(score)
            if not earlier:
                return False
            cutoff = np.percentile(earlier, (1 - 1 / self.reduction_factor) * 100)
            return bool(score < cutoff)
        return False


class RoundRungs(FIFOScheduler):
    """ASHA for a search in rounds: each result at a rung goes to the search's
    ``RoundLimiter``, which says whether the trial stops."""

    def __init__(self, metric: str, time_attr: str = "epoch") -> None:
        super().__init__()
        self.score_key = metric
        self.time_attr = time_attr

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        epoch, score = result.get(self.time_attr), result.get(self.score_key)
        if epoch is None or score is None:
            return TrialScheduler.CONTINUE
        rounds = round_limiter(tune_controller.search_alg)
        stop = rounds.should_stop(trial.trial_id, int(epoch), float(score))
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return "Using ASHA in rounds (RoundRungs)"


def round_limiter(search_alg: Any) -> RoundLimiter:
    """The ``RoundLimiter`` inside Tune's wrappers of the search algorithm."""
    found = search_alg
    while not isinstance(found, RoundLimiter):
        found = getattr(found, "searcher", None)
        if found is None:
            raise TypeError("the rounds scheduler needs the search's RoundLimiter")
    return found
