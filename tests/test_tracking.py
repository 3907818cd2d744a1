"""MLflow tracking that several jobs share: two jobs that create one new tracking database (and
one experiment in it) at the same moment both succeed, and each finds its own run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each process waits for the go file, then opens the search's parent run, as a search job's
# start does: a new database, a new experiment, a run.
JOB_START = """
import sys, time
from pathlib import Path
import mlflow
from abaw_ray import tracking
uri, go, name, state = sys.argv[1:5]
Path(state + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.01)
print(tracking.parent_run(uri, "abaw-va", name, {"space": "x"}, Path(state), resume=False))
"""


def test_jobs_creating_one_tracking_database_at_once_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB_START, uri, str(go), f"search-{i}", str(tmp_path / f"{i}")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    # Every process has imported MLflow and waits: then all start at once.
    deadline = time.time() + 300
    while not all((tmp_path / f"{i}.ready").exists() for i in range(3)):
        assert time.time() < deadline and all(job.poll() is None for job in jobs)
        time.sleep(0.05)
    go.touch()
    outs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    run_ids = {out.strip().splitlines()[-1] for out, _ in outs}
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = db.execute(
            "select r.run_uuid, r.name, e.name from runs r join experiments e "
            "on r.experiment_id = e.experiment_id"
        ).fetchall()
    assert sorted(n for _, n, _ in runs) == ["search-0", "search-1", "search-2"]
    assert {e for *_, e in runs} == {"abaw-va"} and {r for r, *_ in runs} == run_ids
