"""The Ray Train side of a trial: a ``TorchTrainer`` around the worker loop of its mode."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from abaw_ray.train.loop import PRIMARY_METRIC, TrialConfig, train_loop_per_worker

# The CPU share a trial's driver processes ask for on a cluster (Tune's function actor or a
# fit_in_task task; Train's controller, the actors it starts and the stop flag follow it to
# its node). Any share keeps them off a head that offers no CPU; they hold 1.37 GB (PSS) a
# trial (bench/trial_drivers.py) and use little CPU. On a job's own local instance they ask
# for none, so they take no share of a worker's CPU.
TRIAL_DRIVER_CPU = 0.01
# Where a Train run's controller registers its workers' resources for the autoscaler, and
# under which name (Ray internals, ray/train/v2/.../autoscaling_coordinator_client.py).
AUTOSCALING_COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # name, namespace


def train_request_id(run_id: str) -> str:
    """The autoscaler request a Train run (its ``TrainRunContext.run_id``) holds while it runs."""
    return f"train-{run_id}"


def cancel_train_request(run_id: str) -> None:
    """Withdraw a Train run's autoscaler request (asynchronously; a no-op when it holds none).
    Its controller does so as it shuts down, but a controller that is killed first (Tune
    ending the trial actor that owns it) leaves the request to expire 180 s later, keeping
    nodes for a trial that is over."""
    try:
        coordinator = ray.get_actor(
            AUTOSCALING_COORDINATOR[0], namespace=AUTOSCALING_COORDINATOR[1]
        )
    except ValueError:
        return  # no Train run has asked for anything yet
    coordinator.cancel_request.remote(requester_id=train_request_id(run_id))


def build_trainer(
    trial: TrialConfig,
    data_ref: ray.ObjectRef,
    storage_path: str | Path,
    name: str,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    callbacks: list[Any] | None = None,
    epoch_relay: list[Any] | None = None,
    stop_flag: Any = None,
    keep_checkpoints: int | None = 1,
    pseudo_ref: ray.ObjectRef | None = None,
    predict_unlabelled: bool = False,
) -> TorchTrainer:
    """``data_ref``: the object reference of the trial's data, a ``FeatureBank`` when
    ``trial.mode`` is ``frozen`` (``train_loop_per_worker``), a ``FrameIndex`` when it is
    ``finetune`` (``finetune_loop_per_worker``, whose workers read and augment each epoch's
    windows with Ray Data). It travels inside a list so Ray hands the workers the reference,
    and each node fetches the data from the object store once. ``epoch_relay``:
    the queue (``tracking.epoch_relay``) rank 0 puts each epoch's metrics on, for the
    driver to log into a single trial's MLflow run (a search's trials are logged by its Tune
    callback instead). ``stop_flag``: the actor
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
            "epoch_relay": epoch_relay,
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
            # Train retries nothing itself: fit_trial retries a lost worker, never an error
            # the training code raised (that would fail again the same way).
            failure_config=FailureConfig(max_failures=0),
            callbacks=callbacks,
        ),
    )


# Ray Train's worker failures that mean the worker could not be reached (its node was lost),
# not that the training code raised. Train exports no public class for them: named here, and
# tests/test_loop.py fails when a Ray upgrade renames them.
UNREACHABLE_WORKER_ERRORS = ("WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError")


def lost_worker(err: Exception) -> bool:
    """Whether a failed Train run lost a worker or its node (worth a retry, from the last
    checkpoint) rather than meeting an error its training code raised (not worth one: it
    would raise again): a dead actor, or a health check that could not reach the worker."""
    if not isinstance(err, ray.train.WorkerGroupError):
        return True  # the controller's or a preemption's: not the training code's
    failures = list(err.worker_failures.values())
    return not failures or any(
        isinstance(e, ray.exceptions.RayActorError) or type(e).__name__ in UNREACHABLE_WORKER_ERRORS
        for e in failures
    )


def error_tail(err: Exception, lines: int = 3) -> str:
    """The last lines of a failed run's first worker error: what the console shows."""
    failures = getattr(err, "worker_failures", None)
    text = str(failures[min(failures)]) if failures else str(err)
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def fit_trial(max_failures: int = 2, **build: Any) -> Any:
    """``build_trainer(**build).fit()``, run again (it resumes from its last checkpoint: the
    same storage and name) when a worker or its node was lost, at most ``max_failures``
    times; an error the training code raised is raised at once (``lost_worker``)."""
    for attempt in range(max_failures + 1):
        try:
            return build_trainer(**build).fit()
        except ray.train.TrainingFailedError as err:
            if attempt == max_failures or not lost_worker(err):
                raise
    raise AssertionError("unreachable")


@ray.remote(num_cpus=0)
def fit_in_task(
    trial: dict[str, Any],
    data: list[ray.ObjectRef],
    storage: str,
    name: str,
    pseudo: list[ray.ObjectRef] | None = None,
    **kw: Any,
) -> tuple[Any, dict[str, Any]] | None:
    """A Ray task that fits one trial (``fit_trial``, settings ``kw``); its
    best checkpoint and that checkpoint's metrics (None when no epoch finished). It holds no
    CPU, the trainer's workers do, so the driver starts several and only waits. References
    travel inside lists (``data``, ``pseudo``) so that Ray hands the task the references.
    Launch it with ``.options(num_cpus=SearchConfig.driver_cpus)``, like a search's trials."""
    result = fit_trial(
        trial=TrialConfig.from_dict(trial),
        data_ref=data[0],
        storage_path=storage,
        name=name,
        pseudo_ref=pseudo[0] if pseudo else None,
        **kw,
    )
    if not result.best_checkpoints:
        return None
    checkpoint, metrics = result.best_checkpoints[0]
    return checkpoint, dict(metrics)
