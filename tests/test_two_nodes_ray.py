"""Two Ray nodes on this machine, a head and a second node joined with ``ray start
--address``, each with one CPU: a search whose two concurrent trials can only run one per
node completes, each trial reading the features on the node where it runs. Both nodes are
stopped by the process ids this test started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from abaw_ray.cluster import free_port
from abaw_ray.data import load_corpus
from abaw_ray.submission import validate_submission
from abaw_ray.train.loop import TRIAL_JSON
from tests.raytools import kill_session

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _ray_start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["ray", "start", "--num-cpus", "1", "--disable-usage-stats", *args],
        env=env,
        start_new_session=True,  # its Ray processes share the session: stopped by its id
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    return proc


def test_search_runs_its_trials_on_both_nodes(corpus_root, tmp_path):
    port, dash, agent_a, agent_b = free_port(), free_port(), free_port(), free_port()
    # Every process of this cluster finds it by its dashboard, whatever else runs on the host.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}  # own below
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    address = f"127.0.0.1:{port}"
    started = []
    try:
        started.append(
            _ray_start(
                [
                    "--head",
                    f"--port={port}",
                    f"--dashboard-port={dash}",
                    f"--dashboard-agent-listen-port={agent_a}",
                ],
                env,
            )
        )
        # The head keeps Ray's default token authentication; what joins it says so and
        # reads the token the head saved (~/.ray/auth_token), as README tells users to.
        env = {**env, "RAY_AUTH_MODE": "token"}
        started.append(
            _ray_start(
                [
                    f"--address={address}",
                    f"--dashboard-agent-listen-port={agent_b}",
                ],
                env,
            )
        )
        output = tmp_path / "out"
        job = subprocess.run(
            [
                sys.executable,
                "jobs/search_va.py",
                "--address",
                address,
                "--data",
                str(corpus_root),
                "--output",
                str(output),
                "--space",
                str(REPO / "tests" / "data" / "small_va.yaml"),
                "--num-samples",
                "2",
                "--concurrency",
                "2",
                "--scheduler",
                "none",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    finally:
        for proc in started:
            kill_session(proc.pid)
        marker = Path("/tmp/ray/ray_current_cluster")  # let later ray.init() start afresh
        if marker.is_file() and marker.read_text().strip().endswith(f":{port}"):
            marker.unlink()

    (search,) = (output / "ray_results").glob("search_va-*")
    nodes = set()
    for trainer in (search / "trainers").iterdir():
        for ckpt in trainer.glob("checkpoint_*/"):
            nodes.add(json.loads((ckpt / TRIAL_JSON).read_text())["node_id"])
    assert len(nodes) == 2, nodes  # one CPU each: the two trials ran on different nodes
    corpus = load_corpus(corpus_root)
    (submission,) = output.glob("search_va-*/VA_submission.txt")
    assert validate_submission(submission, corpus.templates["va"]) == len(corpus.templates["va"])
