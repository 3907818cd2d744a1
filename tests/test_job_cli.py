"""What every job's command line promises before any work starts: help with defaults, the
registered models as choices, one meaning of --name, which Ray a job joins, and where a
submitted job may write."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from abaw_ray import runtime
from abaw_ray.models import list_models
from abaw_ray.train.job import train_parser
from abaw_ray.tune.job import search_parser

REPO = Path(__file__).resolve().parents[1]


def _extraction_parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("extract_job", REPO / "jobs/extract_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.extraction_parser()


PARSERS = {
    "search_va": lambda: search_parser("va", None),
    "search_expr": lambda: search_parser("expr", None),
    "train_va": lambda: train_parser("va", None, "mfn"),
    "train_expr": lambda: train_parser("expr", None, "expr_transformer"),
    "extract_features": _extraction_parser,
}


@pytest.mark.parametrize("job", sorted(PARSERS))
def test_every_flag_says_what_it_does_and_its_default(job):
    parser = PARSERS[job]()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 10
    undocumented = [a.option_strings[0] for a in flags if not a.help or "default" not in a.help]
    assert undocumented == []


@pytest.mark.parametrize("job", ["train_va", "train_expr"])
def test_model_flag_lists_the_registered_models(job):
    (model,) = [a for a in PARSERS[job]()._actions if "--model" in a.option_strings]
    assert sorted(model.choices) == sorted(list_models())
    assert {"attention", "mfn", "mctn", "transformer", "expr_transformer"} <= set(model.choices)


@pytest.mark.parametrize("job", sorted(PARSERS))
def test_ray_flags_are_the_same_in_every_job(job):
    flags = {a.option_strings[0] for a in PARSERS[job]()._actions if a.option_strings}
    assert {"--address", "--num-cpus", "--ray-logs"} <= flags
    if job != "extract_features":
        assert {"--name", "--resume", "--output"} <= flags


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_train_name_is_continued_only_with_resume(tmp_path):
    out = tmp_path / "out"
    (out / "runs" / "mine").mkdir(parents=True)
    refused = _run(["jobs/train_va.py", "--output", str(out), "--name", "mine"])
    assert refused.returncode == 2
    assert "holds a run already: pass --resume" in refused.stderr
    missing = _run(["jobs/train_va.py", "--output", str(out), "--name", "other", "--resume"])
    assert missing.returncode == 2 and "holds no run to resume" in missing.stderr
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["mine"]  # nothing written


@pytest.mark.parametrize("job", ["jobs/search_va.py", "jobs/train_va.py"])
def test_a_submitted_job_refuses_a_relative_output(job):
    proc = _run([job, "--output", "results"], env={runtime.JOB_SUBMIT_ENV: "{}"})
    assert proc.returncode == 2
    assert "--output results is relative" in proc.stderr
    assert "/shared" in proc.stderr  # says where results should go
    assert not (REPO / "results").exists()


class _FakeRay:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)


@pytest.mark.parametrize(
    "address, env, expected",
    [
        (None, None, "local"),  # never /tmp/ray/ray_current_cluster
        ("ray://head:10001", None, "ray://head:10001"),
        (None, "10.0.0.1:6379", "10.0.0.1:6379"),  # what ray job submit sets
        ("auto", "10.0.0.1:6379", "auto"),
    ],
)
def test_a_job_joins_only_the_cluster_it_is_asked_to(address, env, expected, monkeypatch):
    fake = _FakeRay()
    monkeypatch.setattr(runtime, "ray", fake)
    # setenv first, so that undoing restores the variable's absence (init_ray sets it)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "unset-by-the-test")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    runtime.init_ray(address, num_cpus=2, show_logs=True)
    (call,) = fake.calls
    assert call["address"] == expected
    assert call.get("num_cpus") == (2 if expected == "local" else None)
    if expected == "local":  # its Ray processes find this instance, not another on the host
        assert os.environ["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{call['dashboard_port']}"


def test_ray_output_goes_to_the_log_and_the_jobs_own_lines_to_the_terminal(tmp_path):
    log = tmp_path / "logs" / "job.log"
    script = f"""
import logging, os, sys
from pathlib import Path
from abaw_ray.runtime import ray_output_to
with ray_output_to(Path({str(log)!r})) as console:
    print("a Tune table")
    logging.getLogger("ray").warning("a Ray warning")
    os.write(1, b"native stdout\\n")
    os.write(2, b"native stderr\\n")
    print("trial 1/1 done", file=console.out)
    os.write(console.fd, b"trial progress\\n")
    print("an error of ours", file=console.err)
print("summary, last")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["trial 1/1 done", "trial progress", "summary, last"]
    assert proc.stderr.splitlines() == ["an error of ours"]
    logged = log.read_text()
    for noise in ("a Tune table", "a Ray warning", "native stdout", "native stderr"):
        assert noise in logged
    assert "summary" not in logged and "trial 1/1" not in logged


def test_a_log_that_cannot_be_written_never_fails_the_job(tmp_path):
    """A full disk under the log (/dev/full refuses every write, ENOSPC): Ray's and Tune's
    prints go on, their lines reach the terminal after one note, and the job ends well. Once,
    a full disk aborted a search through Tune's own print."""
    script = """
import os
from pathlib import Path
from abaw_ray.runtime import ray_output_to
with ray_output_to(Path("/dev/full")) as console:
    for i in range(2000):
        print(f"a Tune table row {i}", flush=True)
    os.write(2, b"native stderr\\n")
    print("trial 1/1 done", file=console.out)
print("summary, last")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["trial 1/1 done", "summary, last"]
    err = proc.stderr.splitlines()
    assert err[0].startswith("note: Ray's log /dev/full cannot be written (No space left")
    assert err[1] == "a Tune table row 0" and "a Tune table row 1999" in err
    assert err[-1] == "native stderr"


@pytest.mark.parametrize(
    "space, message",
    [
        (None, "cannot read the search space"),
        ("task: va\nfeatures: {visual: [face_hog\n", "not valid YAML"),
        ("", "expected a mapping with task, features, parameters"),
        ("task: va\nfeatures: {visual: face_hog}\n", "features.visual: expected a list"),
        ("task: va\nfeatures: {visual: [face_hog]}\nparameters: {hiden: {value: 3}}\n", "hiden"),
        (
            "task: va\nfeatures: {visual: [face_hog]}\nparameters: {lr: {value: fast}}\n",
            "'fast' is not a float",
        ),
    ],
)
def test_a_bad_space_is_one_line_and_exit_2_before_ray_starts(tmp_path, space, message):
    path = tmp_path / "space.yaml"
    if space is not None:
        path.write_text(space)
    proc = subprocess.run(
        [sys.executable, "jobs/search_va.py", "--space", str(path), "--output", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and message in lines[0]
    assert "starting search" not in proc.stdout  # refused before Ray


def test_an_output_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    proc = subprocess.run(
        [sys.executable, "jobs/search_va.py", "--output", str(blocker / "run1")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: --output {blocker / 'run1'}: {blocker} is a file, not a folder"
    )


def test_results_inside_the_repository_stay_out_of_a_job_submission(tmp_path):
    """``ray job submit --working-dir .`` uploads the repository as Ray packages it (its own
    packaging, reading .gitignore and .rayignore files): a results folder a job made inside
    the repository (``--output runs``) carries a .gitignore of its own and stays out, and so
    does .git; the upload is the code, a few MB, far below Ray's 100 MiB limit."""
    from ray._private.runtime_env.packaging import create_package

    from abaw_ray.fsutil import ensure_results_dir

    runs = ensure_results_dir(REPO / f"_runs_{tmp_path.name}")  # as `--output runs` makes it
    try:
        (runs / "features").mkdir()
        (runs / "features" / "big.npy").write_bytes(os.urandom(8 << 20))
        package = tmp_path / "package.zip"
        create_package(str(REPO), package, include_gitignore=True)
        names = zipfile.ZipFile(package).namelist()
    finally:
        shutil.rmtree(runs)
    size = package.stat().st_size
    print(f"upload of the working directory: {size / 1e6:.2f} MB in {len(names)} files")
    assert not [n for n in names if n.startswith((runs.name, ".git/", "outputs/", ".venv/"))]
    assert "jobs/search_va.py" in names and "abaw_ray/tune/search.py" in names
    assert size < 10e6


@pytest.mark.parametrize("preset", [None, "3.0"])
def test_every_process_of_a_job_has_train_poll_its_workers_often_unless_the_job_says(
    preset, monkeypatch
):
    """Ray Train's controller takes a report when it polls (2 s by default) and a worker's
    next report waits for it: the jobs ask for 0.5 s for all of a job's processes, through
    ray.init's runtime_env, and leave a value the job was submitted with alone (Ray refuses
    to merge a job's env var with the driver's same one)."""
    fake = _FakeRay()
    monkeypatch.setattr(runtime, "ray", fake)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "unset-by-the-test")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    if preset is None:
        monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    else:
        monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", preset)
    runtime.init_ray(show_logs=True)
    (call,) = fake.calls
    expected = None if preset else {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}}
    assert call["runtime_env"] == expected
