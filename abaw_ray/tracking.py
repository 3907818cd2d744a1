"""MLflow tracking: one parent run per search, a child run per trial (Ray's
``MLflowLoggerCallback``), and an ensemble run holding the submission, recipe and plots. A
single trial (``jobs/train_*.py``) is one run that its rank-0 worker logs every epoch to.

The tracking URI is ``sqlite:///<output>/mlflow.db`` unless MLFLOW_TRACKING_URI says otherwise
(MLflow 3 refuses plain ``file://`` stores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"


def tracking_uri(output: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    output.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output / 'mlflow.db').resolve()}"


def artifact_location(uri: str) -> str | None:
    """Beside our own sqlite database (MLflow would otherwise put artifacts in ./mlruns of
    whatever directory the job runs in); a tracking server keeps its own default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def _client(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def parent_run(
    uri: str, experiment: str, run_name: str, params: dict[str, Any], state_file: Path, resume: bool
) -> str:
    """The search's parent run id; a resumed search reopens the run it started."""
    client = _client(uri)
    if resume and state_file.is_file():
        run_id = json.loads(state_file.read_text())["parent_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    exp = client.get_experiment_by_name(experiment)
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(experiment, artifact_location=artifact_location(uri))
    )
    run = client.create_run(exp_id, run_name=run_name)
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v)[:500])
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"parent_run_id": run.info.run_id}))
    return run.info.run_id


def trial_callback(uri: str, experiment: str, parent_id: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(
        tracking_uri=uri,
        experiment_name=experiment,
        tags={PARENT_TAG: parent_id},
        save_artifact=False,
    )


def child_run(
    uri: str, experiment: str, parent_id: str, run_name: str, params: dict[str, Any]
) -> str:
    """A run under the search's parent run (the ensemble, a control); its id."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name=run_name, tags={PARENT_TAG: parent_id})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v)[:500])
    return run.info.run_id


def log_ensemble(
    uri: str,
    experiment: str,
    parent_id: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    artifacts: list[Path],
) -> str:
    rid = child_run(uri, experiment, parent_id, "ensemble", params)
    client = _client(uri)
    for k, v in metrics.items():
        client.log_metric(rid, k, float(v))
    for path in artifacts:
        client.log_artifact(rid, str(path))
    client.set_terminated(rid)
    return rid


def finish_parent(uri: str, parent_id: str, metrics: dict[str, float]) -> None:
    finish_run(uri, parent_id, metrics)


def log_epoch(tracking: dict[str, str], metrics: dict[str, float], step: int) -> None:
    """From a Train worker (rank 0): one epoch's metrics into the run the driver opened
    (``tracking``: ``{"uri": ..., "run_id": ...}``)."""
    client = _client(tracking["uri"])
    for k, v in metrics.items():
        client.log_metric(tracking["run_id"], k, float(v), step=step)


def finish_run(uri: str, run_id: str, metrics: dict[str, float], status: str = "FINISHED") -> None:
    client = _client(uri)
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v))
    client.set_terminated(run_id, status=status)
