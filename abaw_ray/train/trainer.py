"""The Ray Train side of a trial: a ``TorchTrainer`` around ``train_loop_per_worker``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from abaw_ray.train.loop import PRIMARY_METRIC, TrialConfig, train_loop_per_worker


def build_trainer(
    trial: TrialConfig,
    bank_ref: ray.ObjectRef,
    storage_path: str | Path,
    name: str,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    callbacks: list[Any] | None = None,
    max_failures: int = 2,
) -> TorchTrainer:
    """``bank_ref`` travels inside a list so Ray hands the workers the reference, and each
    node fetches the bank from the object store once."""
    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    metric = PRIMARY_METRIC[trial.task]
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**asdict(trial), "bank": [bank_ref]},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )
