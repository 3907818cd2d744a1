"""The trial stage: windows over the feature bank, the training loop of a Ray Train worker,
and the TorchTrainer around it."""

from abaw_ray.train.data import FeatureBank, build_bank
from abaw_ray.train.loop import (
    PRIMARY_METRIC,
    TrialConfig,
    load_predictions,
    score,
    train_loop_per_worker,
)

__all__ = [
    "PRIMARY_METRIC",
    "FeatureBank",
    "TrialConfig",
    "build_bank",
    "load_predictions",
    "score",
    "train_loop_per_worker",
]
