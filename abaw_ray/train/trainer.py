"""The Ray Train side of a trial: a ``TorchTrainer`` around the worker loop of its mode."""

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
    data_ref: ray.ObjectRef,
    storage_path: str | Path,
    name: str,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    callbacks: list[Any] | None = None,
    max_failures: int = 2,
    tracking: dict[str, str] | None = None,
    stop_flag: Any = None,
    keep_checkpoints: int | None = 1,
    pseudo_ref: ray.ObjectRef | None = None,
    predict_unlabelled: bool = False,
) -> TorchTrainer:
    """``data_ref``: the object reference of the trial's data, a ``FeatureBank`` when
    ``trial.mode`` is ``frozen`` (``train_loop_per_worker``), a ``FrameIndex`` when it is
    ``finetune`` (``finetune_loop_per_worker``, whose workers read and augment each epoch's
    windows with Ray Data). It travels inside a list so Ray hands the workers the reference,
    and each node fetches the data from the object store once. ``tracking`` (``uri``,
    ``run_id``): an MLflow run the workers log each epoch's metrics to (a single trial's run;
    a search's trials are logged by its Tune callback instead). ``stop_flag``: the actor
    handle a search stops the trial by (``stop_requested``). ``keep_checkpoints``: how many
    of the best checkpoints to keep (None: all; a checkpoint is written only when the
    selection score improves). ``pseudo_ref``: an earlier search's ``PseudoLabels`` (for a
    trial with ``pseudo_labels``); ``predict_unlabelled``: also checkpoint predictions of the
    training videos' unlabelled frames (what pseudo-labels are made from)."""
    if trial.mode == "frozen":
        loop = train_loop_per_worker
    elif trial.mode == "finetune":
        from abaw_ray.train.finetune import finetune_loop_per_worker

        loop = finetune_loop_per_worker
    else:
        raise ValueError(f"unknown trial mode {trial.mode!r}: expected 'frozen' or 'finetune'")
    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    metric = PRIMARY_METRIC[trial.task]
    return TorchTrainer(
        loop,
        train_loop_config={
            **asdict(trial),
            "bank": [data_ref],
            "tracking": tracking,
            "stop_flag": [stop_flag] if stop_flag is not None else None,
            "pseudo": [pseudo_ref] if pseudo_ref is not None else None,
            "predict_unlabelled": predict_unlabelled,
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=keep_checkpoints,
                checkpoint_score_attribute=metric,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )


@ray.remote(num_cpus=0)
def fit_in_task(
    trial: dict[str, Any],
    data: list[ray.ObjectRef],
    storage: str,
    name: str,
    pseudo: list[ray.ObjectRef] | None = None,
    **kw: Any,
) -> tuple[Any, dict[str, Any]] | None:
    """A Ray task that builds (``build_trainer``, settings ``kw``) and fits one trial; its
    best checkpoint and that checkpoint's metrics (None when no epoch finished). It holds no
    CPU, the trainer's workers do, so the driver starts several and only waits. References
    travel inside lists (``data``, ``pseudo``) so that Ray hands the task the references."""
    pseudo_ref = pseudo[0] if pseudo else None
    trainer = build_trainer(
        TrialConfig.from_dict(trial), data[0], storage, name, pseudo_ref=pseudo_ref, **kw
    )
    result = trainer.fit()
    if not result.best_checkpoints:
        return None
    checkpoint, metrics = result.best_checkpoints[0]
    return checkpoint, dict(metrics)
