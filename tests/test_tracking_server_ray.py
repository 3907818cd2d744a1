"""A search that logs to a real MLflow tracking server (what the cluster configs start on the
head): every run, metric and artifact goes through the server's HTTP API, no database file is
written beside the results, and a control's epochs reach its run through the driver."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from abaw_ray.runtime import free_port
from tests.raytools import console_script, kill_session

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered /health")


def test_a_search_logs_to_an_mlflow_tracking_server(corpus_root, tmp_path):
    from mlflow import MlflowClient

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = tmp_path / "server"
    store.mkdir()
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            [console_script("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
            + ["--serve-artifacts", "--artifacts-destination", str(store / "artifacts")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(url, server)
        output = tmp_path / "out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        job = subprocess.run(
            [sys.executable, "jobs/search_va.py", "--data", str(corpus_root)]
            + ["--output", str(output), "--space", str(REPO / "tests/data/small_va.yaml")]
            + ["--num-samples", "2", "--num-cpus", "2", "--scheduler", "none", "--control"],
            cwd=REPO,
            env={**env, "MLFLOW_TRACKING_URI": url},
            capture_output=True,
            text=True,
            timeout=900,
            start_new_session=True,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert f"MLflow: {url}" in job.stdout
        client = MlflowClient(url)
        (exp,) = [e for e in client.search_experiments() if e.name == "abaw-va"]
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
        trials = [r for n, r in runs.items() if n.startswith("trial-")]
        (control,) = [r for n, r in runs.items() if n.startswith("control-")]
        parent = next(r for n, r in runs.items() if n.startswith("search_va-"))
        assert len(trials) == 2 and "ensemble" in runs
        assert {r.info.status for r in runs.values()} == {"FINISHED"}
        for run in trials:  # every epoch, through Tune's callback in the driver
            history = client.get_metric_history(run.info.run_id, "val_ccc")
            assert sorted(m.step for m in history) == [1, 2, 3, 4]
        # The control's epochs went worker -> Ray queue -> driver -> server.
        history = client.get_metric_history(control.info.run_id, "val_ccc")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]
        assert "control_val_ccc" in parent.data.metrics or "control_val_ccc" in (
            runs["ensemble"].data.metrics
        )
        artifacts = [a.path for a in client.list_artifacts(runs["ensemble"].info.run_id)]
        assert "VA_submission.txt" in artifacts and "ensemble_recipe.json" in artifacts
        assert list((store / "artifacts").rglob("VA_submission.txt"))  # held by the server
        assert not list(output.rglob("mlflow.db"))  # no database of the job's own
    finally:
        kill_session(server.pid)
