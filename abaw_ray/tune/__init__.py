"""The search stage: YAML search spaces and Ray Tune over Ray Train trials."""

from abaw_ray.tune.search import SearchConfig, TrialOutcome, build_tuner, collect_outcomes
from abaw_ray.tune.space import SearchSpace, SearchSpaceError, load_search_space

__all__ = [
    "SearchConfig",
    "SearchSpace",
    "SearchSpaceError",
    "TrialOutcome",
    "build_tuner",
    "collect_outcomes",
    "load_search_space",
]
