"""The main job end to end: a search killed mid-way resumes without re-running finished
trials, ends with a validated submission and MLflow runs; and it runs under ray job submit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from abaw_ray.data import load_corpus
from abaw_ray.metrics import score_split
from abaw_ray.submission import validate_submission
from abaw_ray.train.loop import TRIAL_JSON, load_predictions
from tests.raytools import Pauses, console_script, kill_session, ray_token_env, venv_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "tests" / "data" / "small_va.yaml"


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))
    }


def _job(args: list[str], pauses: Pauses | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "search_va.py"), *args],
        cwd=REPO,
        env={**_env(), **(pauses.env if pauses else {})},
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


def _runs(output: Path) -> list[tuple[str, str, str | None]]:
    """MLflow runs: (name, status, trial_id tag)."""
    with sqlite3.connect(output / "mlflow.db") as db:
        return db.execute(
            "select r.name, r.status, t.value from runs r left join tags t "
            "on t.run_uuid = r.run_uuid and t.key = 'trial_id'"
        ).fetchall()


def _tune_results(search: Path) -> dict[str, list[dict]]:
    """Every result Tune recorded, by trial id (from each trial's result.json)."""
    results = {}
    for f in search.glob("run_trial_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


def test_killed_and_interrupted_search_resumes_exactly(corpus_root, tmp_path):
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
    ]
    # 1. Killed outright (SIGKILL to the job and its Ray) as the second trial starts: the
    # trial is held at its start (a pause point) until the kill has landed.
    pauses = Pauses(tmp_path / "pause1", "trial_start")
    proc = _job(args, pauses)
    try:
        pauses.hold_at("trial_start", 2, proc)
    finally:
        kill_session(proc.pid)
        proc.communicate()
    search = _search_dir(output)
    (first,) = [n for n, ckpts in _trainers(output).items() if ckpts]
    first_ckpts = _trainers(output)[first]
    assert first_ckpts and first == f"train-{pauses.reached('trial_start')[0]}"
    mtime = (search / "trainers" / first).stat().st_mtime_ns

    # Naming the existing search without --resume: the job refuses to clobber it.
    again = _job([*args, "--name", search.name])
    out, _ = again.communicate(timeout=200)
    kill_session(again.pid)
    assert again.returncode == 2 and "--resume" in out

    # 2. Resumed, then interrupted (SIGINT, as Ctrl-C) with its third trial held at its start
    # (the second, restarted, goes on): it stops, says how to resume, writes no ensemble or
    # submission and marks its MLflow runs KILLED.
    pauses = Pauses(tmp_path / "pause2", "trial_start")
    resumed = _job([*args, "--resume"], pauses)
    try:
        pauses.hold_at("trial_start", 2, resumed)
        os.killpg(resumed.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        out, _ = resumed.communicate(timeout=300)
    finally:
        kill_session(resumed.pid)
    assert resumed.returncode == 130, out[-3000:]
    assert f"--resume --name {search.name}" in out
    assert "Tuner.restore" not in out  # Ray's own advice is not this project's command
    assert not (output / search.name / "VA_submission.txt").exists()
    runs = _runs(output)
    assert ("ensemble", "FINISHED", None) not in runs and not any(n == "ensemble" for n, *_ in runs)
    assert not [r for r in runs if r[1] == "RUNNING"], runs
    assert any(n == search.name and status == "KILLED" for n, status, _ in runs)

    # 3. Resumed to the end of its trials, then killed outright (SIGKILL to the job and its
    # Ray) where it starts the ensemble: after the trials table, before any output.
    pauses = Pauses(tmp_path / "pause3", "before_ensemble")
    final = _job([*args, "--resume"], pauses)
    try:
        pauses.wait("before_ensemble", 1, final)
    finally:
        kill_session(final.pid)
    seen = final.communicate()[0].splitlines()
    assert any(line.startswith("trial 4/4 ") for line in seen), seen[-20:]
    assert any("top trials by" in line for line in seen), seen[-20:]
    assert not (output / search.name / "VA_submission.txt").exists()
    assert not any(n == "ensemble" for n, *_ in _runs(output))
    trained = {n: (search / "trainers" / n).stat().st_mtime_ns for n in _trainers(output)}
    assert len(trained) == 4 and trained[first] == mtime, trained  # the first never re-ran

    # 4. Resumed once more: it finishes the ensemble without re-running a trial. Four trials
    # in all, none started twice, none touched since.
    last = _job([*args, "--resume"])
    out, _ = last.communicate(timeout=900)
    kill_session(last.pid)
    assert last.returncode == 0, out[-3000:]
    after = _trainers(output)
    assert len(after) == 4, after
    assert after[first] == first_ckpts
    assert {n: (search / "trainers" / n).stat().st_mtime_ns for n in after} == trained
    assert not re.search(r"^trial \d/4 ", out, re.M)  # no trial ran in this last part
    runs = _runs(output)
    trial_runs = [r for r in runs if r[2] is not None]
    assert sorted(r[2] for r in trial_runs) == sorted(n.split("-")[1] for n in after)
    assert all(status == "FINISHED" for _, status, _ in trial_runs), trial_runs
    assert [n for n, *_ in runs].count("ensemble") == 1

    # Quiet, clear output: a line per finished trial, no Ray worker noise, summary last.
    lines = out.strip().splitlines()
    assert not [line for line in [*seen, *lines] if "RayTrainWorker" in line or "INFO" in line]
    assert lines[-2].startswith("submission: ") and lines[-2].endswith("(validated)")
    # The output ends with the search's cost: 4 trials of 1 CPU, each held for the wall time
    # Tune measured; the total agrees with Tune's own records.
    cost = re.match(r"cost: 4 trials \(1 CPU, 0 GPU each\) held ([\d.]+) CPU-hours", lines[-1])
    assert cost, lines[-1]

    corpus = load_corpus(corpus_root)
    submission = output / search.name / "VA_submission.txt"
    assert validate_submission(submission, corpus.templates["va"]) == len(corpus.templates["va"])
    assert oct(submission.stat().st_mode & 0o777) == "0o644"
    assert "held out" in out and "refit on all" in out

    # The table, Tune and MLflow agree on every trial's best epoch and score (ASHA stopped
    # some trials: nothing after Tune's last epoch of a trial counts).
    # The table numbers trials as Tune's own counter does: run_trial_<id>_<N>_<settings>...
    tune_results = _tune_results(search)
    trial_of = {
        int(d.name.split(f"_{t}_")[1].split("_")[0]): t
        for t in tune_results
        for d in search.glob(f"run_trial_{t}_*")
    }
    table = {
        trial_of[int(m.group(1))]: (float(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"^\s+#(\d+)\s+(-?[\d.]+)\s+\S+\s+\S+\s+(\d+)\s", out, re.M)
    }
    assert sorted(table) == sorted(tune_results) and len(table) == 4
    with sqlite3.connect(output / "mlflow.db") as db:
        for trial_id, (score, epoch) in table.items():
            rows = tune_results[trial_id]
            best = max(rows, key=lambda r: r["val_ccc"])
            assert (round(best["val_ccc"], 4), best["epoch"]) == (score, epoch)
            run_uuid = db.execute(
                "select run_uuid from tags where key = 'trial_id' and value = ?", (trial_id,)
            ).fetchone()[0]
            history = db.execute(
                "select value, step from metrics where run_uuid = ? and key = 'val_ccc'",
                (run_uuid,),
            ).fetchall()
            assert sorted(step for _, step in history) == [r["epoch"] for r in rows]
            assert max(history) == pytest.approx((best["val_ccc"], epoch), abs=1e-9)
            # Its cost: 1 CPU for the wall time Tune measured up to its last report.
            (cpu_seconds,) = db.execute(
                "select value from metrics where run_uuid = ? and key = 'cpu_seconds'",
                (run_uuid,),
            ).fetchone()
            assert cpu_seconds == pytest.approx(rows[-1]["time_total_s"])
    hours = sum(rows[-1]["time_total_s"] for rows in tune_results.values()) / 3600
    assert float(cost.group(1)) == pytest.approx(hours, abs=6e-4)

    # Each trial's reported score is the official global CCC of its checkpointed predictions
    # on the selection videos alone: the held-out videos took no part.
    recipe = json.loads((output / search.name / "ensemble_recipe.json").read_text())
    trial_ensemble = recipe["trial_ensemble"]
    selection, held = trial_ensemble["selection_videos"], trial_ensemble["holdout_videos"]
    val_videos = corpus.split_videos("va", "val")
    assert len(held) == max(1, round(len(val_videos) / 3))  # the default: a third
    assert not set(held) & set(selection)
    assert set(selection) | set(held) == set(val_videos)
    labels = {v: corpus.labels_on_timeline("va", v) for v in selection}
    for trial_id, (score, epoch) in table.items():
        ckpts = _checkpoints(search / "trainers" / f"train-{trial_id}")
        saved = [json.loads((c / TRIAL_JSON).read_text()) for c in ckpts]
        (best_ckpt,) = [c for c, m in zip(ckpts, saved) if m["metrics"]["epoch"] == epoch]
        preds = load_predictions(best_ckpt)
        assert set(preds["holdout"]) == set(held)
        by_hand = score_split(
            "va",
            preds["selection"],
            selection,
            {v: lab.values for v, lab in labels.items()},
            {v: lab.valid for v, lab in labels.items()},
        )
        assert round(by_hand["ccc"], 4) == score
    with sqlite3.connect(output / "mlflow.db") as db:
        kind = db.execute(
            "select value from experiment_tags where key = 'mlflow.experimentKind'"
        ).fetchall()
    assert kind and {k for (k,) in kind} == {"custom_model_development"}
    artifacts = output / "mlartifacts"  # beside the database, not in the job's directory
    assert list(artifacts.rglob("VA_submission.txt")) and list(artifacts.rglob("*.png"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """A real MLflow tracking server on loopback, as the cluster configs start on the head: its
    database on local disk, artifacts served; (the process, its URL) once it answers."""
    import urllib.request

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    folder.mkdir()
    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen(
            [console_script("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
            + ["--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 300
    while time.time() < deadline:
        assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                if reply.status == 200:
                    return server, url
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered /health")


def test_job_runs_under_ray_job_submit_and_stops_cleanly_under_ray_job_stop(corpus_root, tmp_path):
    """As on a cluster: a head started as the configs start it (token authentication with a
    token the test makes, whatever HOME holds; MLFLOW_TRACKING_URI naming the head's tracking
    server; 60 s for a stopped job), jobs submitted with ``ray job submit --working-dir``.
    Every run, metric and artifact reaches the tracking server (a control's epochs through the
    job's driver), no database is written beside the results, no secret in any output; then
    ``ray job stop`` stops a search cleanly."""
    from mlflow import MlflowClient

    server, url = _mlflow_server(tmp_path / "mlflow")
    auth = ray_token_env(tmp_path)
    # This venv's scripts first on PATH: the entrypoint's "python" is this environment's.
    env = venv_env({**{k: v for k, v in _env().items() if not k.startswith("RAY_AUTH")}, **auth})
    head_env = {**env, "RAY_JOB_STOP_WAIT_TIME_S": "60", "MLFLOW_TRACKING_URI": url}
    port, dash, agent = _free_port(), _free_port(), _free_port()
    head = subprocess.Popen(
        [
            console_script("ray"),
            "start",
            "--head",
            "--num-cpus",
            "2",
            f"--port={port}",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",  # not another instance's default port
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        env=head_env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ray = [console_script("ray"), "job"]
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out
        address = f"http://127.0.0.1:{dash}"
        output = tmp_path / "out"

        def submit_job(*extra: str) -> str:
            command = [*ray, "submit", f"--address={address}", "--working-dir", str(REPO)]
            command += [*extra, "--no-wait", "--", "python", "jobs/search_va.py"]
            command += ["--data", str(corpus_root), "--output", str(output)]
            command += ["--space", str(SPACE), "--num-samples", "2", "--control"]
            deadline = time.time() + 120
            while True:  # the head's job agent may still be starting: Ray asks to retry
                submit = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=120
                )
                if "No available agent" not in submit.stderr or time.time() > deadline:
                    break
                time.sleep(2)
            assert submit.returncode == 0, submit.stdout + submit.stderr
            return re.search(r"raysubmit_[A-Za-z0-9]+", submit.stdout).group(0)

        def wait_status(job_id: str, *ends: str) -> str:
            deadline = time.time() + 600
            while time.time() < deadline:
                status = subprocess.run(
                    [*ray, "status", f"--address={address}", job_id],
                    env=env,
                    capture_output=True,
                    text=True,
                ).stdout
                status = re.sub(r"\x1b\[[0-9;]*m", "", status).upper()  # no terminal colours
                if any(e in status for e in ends):
                    return status
                time.sleep(3)
            raise AssertionError(f"job {job_id} never reached {ends}: {status}")

        def job_logs(job_id: str) -> str:
            logs = subprocess.run(
                [*ray, "logs", f"--address={address}", job_id],
                env=env,
                capture_output=True,
                text=True,
            )
            return logs.stdout

        job_id = submit_job()
        status = wait_status(job_id, "SUCCEEDED", "FAILED", "STOPPED")
        logs = job_logs(job_id)
        assert "SUCCEEDED" in status, logs[-3000:]
        assert f"results in {output}" in logs  # it says where its results go
        lines = logs.strip().splitlines()
        assert lines[-1].startswith("cost: 2 trials (1 CPU, 0 GPU each)"), lines[-3:]
        assert lines[-2].startswith("submission: ") and lines[-2].endswith("(validated)")
        # No secret in what the job printed or wrote: the cluster's token appears nowhere.
        token = Path(auth["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        assert len(token) >= 16 and token not in logs
        for path in output.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path
        corpus = load_corpus(corpus_root)
        (submission,) = output.glob("search_va-*/VA_submission.txt")
        assert validate_submission(submission, corpus.templates["va"]) > 0
        # Everything went to the tracking server: no database of the job's own.
        assert f"MLflow: {url}/#/experiments/" in logs
        assert not list(output.rglob("mlflow.db"))
        client = MlflowClient(url)
        (exp,) = [e for e in client.search_experiments() if e.name == "abaw-va"]
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
        trials = [r for n, r in runs.items() if n.startswith("trial-")]
        (control,) = [r for n, r in runs.items() if n.startswith("control-")]
        assert len(trials) == 2 and "ensemble" in runs
        assert {r.info.status for r in runs.values()} == {"FINISHED"}
        # Every epoch a trial reported to Tune (ASHA may stop one at its grace period, 3) is
        # in MLflow; the control, never stopped early, through the driver's relay: all 4.
        for run in trials:
            (result,) = output.rglob(
                f"run_trial_{run.info.run_name.split('-', 1)[1]}_*/result.json"
            )
            reported = [json.loads(line)["epoch"] for line in result.read_text().splitlines()]
            history = client.get_metric_history(run.info.run_id, "val_ccc")
            assert sorted(m.step for m in history) == reported and len(reported) >= 3
        history = client.get_metric_history(control.info.run_id, "val_ccc")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]
        artifacts = [a.path for a in client.list_artifacts(runs["ensemble"].info.run_id)]
        assert "VA_submission.txt" in artifacts and "ensemble_recipe.json" in artifacts
        assert list((tmp_path / "mlflow" / "artifacts").rglob("VA_submission.txt"))

        # `ray job stop` while a trial is held at its start: the job stops as Ctrl-C stops
        # it (SIGTERM, then the 60 s the head gives before SIGKILL): its MLflow runs are
        # KILLED, none RUNNING, and it prints how to resume.
        pauses = Pauses(tmp_path / "pause", "trial_start")
        runtime_env = json.dumps({"env_vars": pauses.env})
        stopped = submit_job("--runtime-env-json", runtime_env)
        pauses.wait("trial_start", 1)
        subprocess.run(
            [*ray, "stop", f"--address={address}", stopped],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        wait_status(stopped, "STOPPED", "FAILED", "SUCCEEDED")
        logs = job_logs(stopped)
        assert "interrupted by SIGTERM" in logs and "--resume --name search_va-" in logs, logs
        assert "Resume it with: " in logs
        statuses = [r.info.status for r in client.search_runs([exp.experiment_id])]
        assert "RUNNING" not in statuses and statuses.count("KILLED") >= 1, statuses
    finally:
        kill_session(head.pid)  # only the head this test started
        kill_session(server.pid)
        marker = Path("/tmp/ray/ray_current_cluster")  # let later ray.init() start afresh
        if marker.is_file() and marker.read_text().strip().endswith(f":{port}"):
            marker.unlink()


def _expr_search(
    corpus_root: Path, output: Path, name: str, samples: int, scheduler: str = "none"
) -> str:
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
            scheduler,
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
    # In rounds (tune/rounds.py): Tune's controller hands the scheduler the search's limiter.
    out = _expr_search(corpus_root, output, "search_expr-first", 2, scheduler="rounds")
    assert "(in rounds: " in out and re.search(r"^  #[12] ", out, re.M), out[-3000:]
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


def test_a_trial_error_is_not_retried_and_the_console_shows_it(corpus_root, tmp_path):
    """A deterministic error in a trial (here a negative hidden size) ends the trial at once:
    Train and Tune retry lost workers and nodes, never the same error; the console names the
    trial and shows the error's last line; the MLflow run is FAILED."""
    space = yaml.safe_load(SPACE.read_text())
    space["parameters"]["hidden"] = {"value": -1}
    space["parameters"]["model"] = {"value": "attention"}
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    output = tmp_path / "out"
    pauses = Pauses(tmp_path / "pause", "worker_start")
    pauses.release("worker_start")  # never held: only counted
    job = _job(
        ["--data", str(corpus_root), "--output", str(output), "--space", str(space_file)]
        + ["--num-samples", "2", "--num-cpus", "2", "--concurrency", "1"],
        pauses,
    )
    out, _ = job.communicate(timeout=900)
    kill_session(job.pid)
    assert job.returncode == 1, out[-3000:]
    starts = pauses.times("worker_start")
    assert len(starts) == 2 and set(starts.values()) == {1}, starts  # one attempt a trial
    failed = re.findall(r"^trial \d/2 (#\d) failed: (.*)$", out, re.M)  # named as in the table
    assert sorted(name for name, _ in failed) == ["#1", "#2"], out[-3000:]
    assert all("RuntimeError" in why or "negative" in why for _, why in failed), failed
    assert "finished an epoch" in out
    runs = _runs(output)
    trial_runs = [status for _, status, trial in runs if trial is not None]
    assert trial_runs == ["FAILED", "FAILED"], runs
