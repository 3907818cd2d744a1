"""The trial stage: windows over the feature bank, the training loop of a Ray Train worker,
and the TorchTrainer around it."""

from abaw_ray.train.bank import FeatureBank, build_bank, draw_holdout, split_holdout
from abaw_ray.train.loop import TrialConfig, load_predictions, train_loop_per_worker

__all__ = [
    "FeatureBank",
    "TrialConfig",
    "build_bank",
    "draw_holdout",
    "load_predictions",
    "split_holdout",
    "train_loop_per_worker",
]
