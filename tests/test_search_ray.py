"""The main job end to end: a search killed mid-way resumes without re-running finished
trials, ends with a validated submission and MLflow runs; and it runs under ray job submit."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abaw_ray.data import load_corpus
from abaw_ray.metrics import score_split
from abaw_ray.submission import validate_submission
from abaw_ray.train.loop import TRIAL_JSON, load_predictions
from tests.raytools import kill_session

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "tests" / "data" / "small_va.yaml"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}


def _job(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "search_va.py"), *args],
        cwd=REPO,
        env=_env(),
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _search_dir(output: Path) -> Path | None:
    found = sorted((output / "ray_results").glob("search_va-*"))
    return found[0] if found else None


def _trainers(output: Path) -> dict[str, list[str]]:
    search = _search_dir(output)
    root = search / "trainers" if search else None
    if root is None or not root.is_dir():
        return {}
    return {d.name: [c.name for c in _checkpoints(d)] for d in root.iterdir()}


def _checkpoints(trainer: Path) -> list[Path]:
    """A Train run's checkpoint folders (not its checkpoint_manager_snapshot.json)."""
    return sorted(c for c in trainer.glob("checkpoint_*") if c.is_dir())


def test_killed_search_resumes_without_rerunning_finished_trials(corpus_root, tmp_path):
    output = tmp_path / "out"
    args = [
        "--data",
        str(corpus_root),
        "--output",
        str(output),
        "--space",
        str(SPACE),
        "--num-samples",
        "4",
        "--num-cpus",
        "2",
        "--concurrency",
        "1",
        "--scheduler",
        "none",
    ]
    proc = _job(args)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if len(_trainers(output)) >= 2:  # sequential trials: the first one has finished
                break
            time.sleep(0.5)
        assert len(_trainers(output)) >= 2, "no trial finished before the deadline"
    finally:
        kill_session(proc.pid)
        proc.communicate()
    before = _trainers(output)
    finished = {name: ckpts for name, ckpts in before.items() if ckpts}
    first = min(
        finished,
        key=lambda n: (_search_dir(output) / "trainers" / n).stat().st_mtime,
    )
    mtime = (_search_dir(output) / "trainers" / first).stat().st_mtime_ns

    # Naming the existing search without --resume: the job refuses to clobber it.
    again = _job([*args, "--name", _search_dir(output).name])
    out, _ = again.communicate(timeout=200)
    kill_session(again.pid)
    assert again.returncode == 2 and "--resume" in out

    resumed = _job([*args, "--resume"])
    out, _ = resumed.communicate(timeout=900)
    kill_session(resumed.pid)
    assert resumed.returncode == 0, out[-3000:]
    after = _trainers(output)
    assert len(after) == 4, after  # four trials in all, none started twice
    assert after[first] == before[first]  # the finished trial was not re-run
    assert (_search_dir(output) / "trainers" / first).stat().st_mtime_ns == mtime

    search = _search_dir(output)
    submission = output / search.name / "VA_submission.txt"
    corpus = load_corpus(corpus_root)
    assert validate_submission(submission, corpus.templates["va"]) == len(corpus.templates["va"])
    assert "held out" in out and "refit on all" in out

    # Each trial's reported score is the official global CCC of its checkpointed predictions
    # on the selection videos alone: the held-out videos took no part.
    recipe = json.loads((output / search.name / "ensemble_recipe.json").read_text())
    selection, held = recipe["selection_videos"], recipe["holdout_videos"]
    val_videos = corpus.split_videos("va", "val")
    assert len(held) == max(1, round(len(val_videos) / 3))  # the default: a third
    assert not set(held) & set(selection)
    assert set(selection) | set(held) == set(val_videos)
    labels = {v: corpus.labels_on_timeline("va", v) for v in selection}
    for name in after:
        ckpts = _checkpoints(search / "trainers" / name)
        assert len(ckpts) == 1, name  # the best epoch's, kept alone
        saved = json.loads((ckpts[0] / TRIAL_JSON).read_text())
        preds = load_predictions(ckpts[0])
        assert set(preds["holdout"]) == set(held)
        by_hand = score_split(
            "va",
            preds["val"],
            selection,
            {v: lab.values for v, lab in labels.items()},
            {v: lab.valid for v, lab in labels.items()},
        )
        assert saved["metrics"]["val_ccc"] == pytest.approx(by_hand["ccc"], abs=1e-6)
    with sqlite3.connect(output / "mlflow.db") as db:
        names = [r[0] for r in db.execute("select name from runs")]
        parent = db.execute("select run_uuid from runs where name like 'search_va-%'").fetchone()[0]
        children = db.execute(
            "select count(*) from tags where key='mlflow.parentRunId' and value=?", (parent,)
        ).fetchone()[0]
    assert names.count("ensemble") >= 1
    artifacts = output / "mlartifacts"  # beside the database, not in the job's directory
    assert list(artifacts.rglob("VA_submission.txt")) and list(artifacts.rglob("*.png"))
    assert children >= 5  # every trial and the ensemble hang under the search's parent run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_job_runs_under_ray_job_submit(corpus_root, tmp_path):
    env = {**_env(), "RAY_AUTH_MODE": "token"}
    port, dash = _free_port(), _free_port()
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--num-cpus",
            "2",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out
        address = f"http://127.0.0.1:{dash}"
        output = tmp_path / "out"
        submit = subprocess.run(
            [
                "ray",
                "job",
                "submit",
                f"--address={address}",
                "--working-dir",
                str(REPO),
                "--no-wait",
                "--",
                "python",
                "jobs/search_va.py",
                "--data",
                str(corpus_root),
                "--output",
                str(output),
                "--space",
                str(SPACE),
                "--num-samples",
                "2",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submit.stdout).group(0)
        status = ""
        deadline = time.time() + 600
        while time.time() < deadline:
            status = subprocess.run(
                ["ray", "job", "status", f"--address={address}", job_id],
                env=env,
                capture_output=True,
                text=True,
            ).stdout
            status = re.sub(r"\x1b\[[0-9;]*m", "", status).upper()  # drop terminal colours
            if "SUCCEEDED" in status or "FAILED" in status or "STOPPED" in status:
                break
            time.sleep(3)
        logs = subprocess.run(
            ["ray", "job", "logs", f"--address={address}", job_id],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        assert "SUCCEEDED" in status, logs[-3000:]
        corpus = load_corpus(corpus_root)
        (submission,) = output.glob("search_va-*/VA_submission.txt")
        assert validate_submission(submission, corpus.templates["va"]) > 0
    finally:
        kill_session(head.pid)  # only the head this test started
        marker = Path("/tmp/ray/ray_current_cluster")  # let later ray.init() start afresh
        if marker.is_file() and marker.read_text().strip().endswith(f":{port}"):
            marker.unlink()


def _expr_search(corpus_root: Path, output: Path, name: str, samples: int) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "search_expr.py"),
            "--data",
            str(corpus_root),
            "--output",
            str(output),
            "--space",
            str(REPO / "tests" / "data" / "small_expr.yaml"),
            "--num-samples",
            str(samples),
            "--num-cpus",
            "2",
            "--scheduler",
            "none",
            "--name",
            name,
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_expression_searches_end_with_their_own_validated_submissions(corpus_root, tmp_path):
    output = tmp_path / "out"
    out = _expr_search(corpus_root, output, "search_expr-first", 2)
    corpus = load_corpus(corpus_root)
    template = corpus.templates["expr"]
    first = output / "search_expr-first" / "EXPR_submission.txt"
    assert validate_submission(first, template) == len(template)
    assert "majority-class baseline" in out and "per-class F1, ensemble" in out
    assert list((output / "search_expr-first").glob("confusion_*.png"))
    assert oct(first.stat().st_mode & 0o777) == "0o644"
    content = first.read_bytes()

    # A second search into the same output writes its own file and leaves the first alone.
    _expr_search(corpus_root, output, "search_expr-second", 1)
    second = output / "search_expr-second" / "EXPR_submission.txt"
    assert validate_submission(second, template) == len(template)
    assert first.read_bytes() == content
