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

from abaw_ray.data import load_corpus
from abaw_ray.runtime import free_port
from abaw_ray.submission import validate_submission
from abaw_ray.train.loop import TRIAL_JSON
from tests.raytools import console_script, kill_session, ray_token_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _ray_start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [console_script("ray"), "start", "--num-cpus", "1", "--disable-usage-stats", *args],
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    # Token authentication with a token of the test's own, on both nodes and the job (what
    # the cluster configs do with the user's token), whatever HOME holds.
    env.update(ray_token_env(tmp_path))
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
