"""MLflow tracking: one parent run per search, a child run per trial (``trial_callback``),
and an ensemble run holding the submission, recipe and plots. A single trial
(``jobs/train_*.py``) or a control is one run, logged every epoch.

Only the job's driver process talks to MLflow. A search's trials reach it through Tune (its
callbacks run in the driver); a single trial's rank-0 worker puts each epoch's metrics on a
Ray queue that a thread of the driver drains into the run (``epoch_relay``). So a cluster's
tracking server is reached from the head alone, and no worker writes a store.

The tracking URI is MLFLOW_TRACKING_URI when set (on a cluster, the head's tracking server:
the cluster configs set it), else ``sqlite:///<output>/mlflow.db`` (MLflow 3 refuses plain
``file://`` stores). Creating that database's tables is done under a file lock, so two jobs
that start on one new database at once both succeed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from abaw_ray.fsutil import atomic_write_text
from abaw_ray.tasks import TRIAL_ERROR

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "trial_id"
# MLflow 3 opens an experiment without this tag in its GenAI (traces) view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(output: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    output.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output / 'mlflow.db').resolve()}"


UI_PORT = 5000  # mlflow ui's default port, where a local database is served


def ui_link(uri: str, experiment: str) -> str:
    """Where a person looks at an experiment's runs: its runs table (the "Model training"
    view) on the tracking server, or, for a local database, on the ``mlflow ui`` the line
    gives the command of."""
    exp = _client(uri).get_experiment_by_name(experiment)
    page = f"#/experiments/{exp.experiment_id}/runs" if exp is not None else "#/experiments"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return (
        f"http://127.0.0.1:{UI_PORT}/{page} once served by "
        f"mlflow ui --host 127.0.0.1 --port {UI_PORT} --backend-store-uri {uri}"
    )


def artifact_location(uri: str) -> str | None:
    """Beside our own sqlite database (MLflow would otherwise put artifacts in ./mlruns of
    whatever directory the job runs in); a tracking server keeps its own default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def _client(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    if not uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(uri)
    # The first client of a new database creates and migrates its tables; two processes doing
    # it at once collide ("duplicate column name: step"). One at a time; later it is a no-op.
    from filelock import FileLock

    with FileLock(f"{uri[len('sqlite:///') :]}.lock"):
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


def experiment_id(client: Any, uri: str, experiment: str) -> str:
    """The experiment's id, created (opening on the training-runs view) if it is new; another
    job creating it at the same moment is no error."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(
            experiment, artifact_location=artifact_location(uri), tags=EXPERIMENT_KIND
        )
    except MlflowException:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def parent_run(
    uri: str, experiment: str, run_name: str, params: dict[str, Any], state_file: Path, resume: bool
) -> str:
    """The search's parent run id; a resumed search reopens the run it started."""
    client = _client(uri)
    if resume and state_file.is_file():
        run_id = json.loads(state_file.read_text())["parent_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id(client, uri, experiment), run_name=run_name)
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v)[:500])
    state_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_file, json.dumps({"parent_run_id": run.info.run_id}))
    return run.info.run_id


def trial_callback(
    uri: str, experiment: str, parent_id: str, params: Callable[[dict], dict] | None = None
) -> Any:
    """A Tune callback logging one MLflow run per trial under the search's parent run. A
    resumed search finds each trial's run again (by its ``trial_id`` tag) and continues it:
    one run per trial, however often the search is resumed. Steps are the reported epochs.
    ``params``: a trial's sampled config -> the parameters to record (default: the config;
    a search records every setting the trial trained with, defaults included)."""
    from ray.tune.logger import LoggerCallback

    class TrialRuns(LoggerCallback):
        def __init__(self) -> None:
            self.runs: dict[str, str] = {}

        def run_id(self, trial: Any) -> str:
            if trial.trial_id in self.runs:
                return self.runs[trial.trial_id]
            client = _client(uri)
            exp_id = experiment_id(client, uri, experiment)
            found = client.search_runs(
                [exp_id],
                f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.{TRIAL_TAG} = '{trial.trial_id}'",
            )
            if found:
                rid = found[0].info.run_id
                client.update_run(rid, status="RUNNING")
            else:
                run = client.create_run(
                    exp_id,
                    run_name=f"trial-{trial.trial_id}",
                    tags={PARENT_TAG: parent_id, TRIAL_TAG: trial.trial_id},
                )
                rid = run.info.run_id
                for k, v in (params(trial.config) if params else trial.config).items():
                    client.log_param(rid, k, str(v)[:500])
            self.runs[trial.trial_id] = rid
            return rid

        def log_trial_start(self, trial: Any) -> None:
            self.run_id(trial)

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            from mlflow.entities import Metric

            step = int(result.get("epoch", iteration))
            now = int(result.get("timestamp", 0) * 1000)
            metrics = [
                Metric(k, float(v), now, step)
                for k, v in result.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            _client(uri).log_batch(self.run_id(trial), metrics=metrics)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            client = _client(uri)
            error = (trial.last_result or {}).get(TRIAL_ERROR)
            if error:  # the trial's training code raised: it ended there, not retried
                client.set_tag(self.run_id(trial), "error", str(error)[:5000])
            client.set_terminated(self.run_id(trial), "FAILED" if failed or error else "FINISHED")

    return TrialRuns()


def kill_runs(uri: str, parent_id: str, status: str = "KILLED") -> int:
    """Marks the search's parent run and its children still RUNNING as ``status`` (KILLED: an
    interrupted search; FAILED: a search that failed); the number of children marked."""
    client = _client(uri)
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'",
    )
    for run in children:
        client.set_terminated(run.info.run_id, status)
    client.set_terminated(parent_id, status)
    return len(children)


def child_run(
    uri: str, experiment: str, parent_id: str, run_name: str, params: dict[str, Any]
) -> str:
    """A run under the search's parent run (the ensemble, a control); its id."""
    client = _client(uri)
    exp_id = experiment_id(client, uri, experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={PARENT_TAG: parent_id})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v)[:500])
    return run.info.run_id


def log_finished_search(
    uri: str,
    experiment: str,
    parent_id: str,
    summary: dict[str, float],
    params: dict[str, Any],
    artifacts: list[Path],
    trial_metrics: dict[str, dict[str, float]],
) -> None:
    """A finished search's last records: the ensemble's run (``summary``, ``params``,
    ``artifacts``), ``trial_metrics[trial_id]`` added to each trial's run (found by its
    ``trial_id`` tag), and the search's run, finished."""
    client = _client(uri)
    ensemble = child_run(uri, experiment, parent_id, "ensemble", params)
    for k, v in summary.items():
        client.log_metric(ensemble, k, float(v))
    for path in artifacts:
        client.log_artifact(ensemble, str(path))
    client.set_terminated(ensemble)
    exp_id = experiment_id(client, uri, experiment)
    for run in client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{parent_id}'"):
        for k, v in trial_metrics.get(run.data.tags.get(TRIAL_TAG), {}).items():
            client.log_metric(run.info.run_id, k, float(v))
    finish_run(uri, parent_id, summary)


def log_epoch(relay: list[Any], metrics: dict[str, float], step: int) -> None:
    """From a Train worker (rank 0): one epoch's metrics onto the driver's ``epoch_relay``
    (a list holding its queue)."""
    relay[0].put((step, {k: float(v) for k, v in metrics.items()}))


@contextlib.contextmanager
def epoch_relay(
    uri: str, run_id: str, on_epoch: Callable[[int, dict[str, float]], None] | None = None
) -> Iterator[list[Any]]:
    """A Ray queue for a trial's workers (``log_epoch``), drained by a thread of this process
    into the MLflow run ``run_id`` (and ``on_epoch``, a job's progress line) until the block
    ends (then emptied once more). Yields the queue in a list, as a trainer's config carries
    handles."""
    from mlflow.entities import Metric
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()

    def drain() -> None:
        client = _client(uri)
        while True:
            try:
                step, metrics = queue.get(timeout=0.5)
            except Empty:
                if done.is_set():
                    return
                continue
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, int(time.time() * 1000), step) for k, v in metrics.items()],
            )
            if on_epoch is not None:
                on_epoch(step, metrics)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield [queue]
    finally:
        done.set()
        thread.join()
        queue.shutdown()


def finish_run(uri: str, run_id: str, metrics: dict[str, float], status: str = "FINISHED") -> None:
    client = _client(uri)
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v))
    client.set_terminated(run_id, status=status)
