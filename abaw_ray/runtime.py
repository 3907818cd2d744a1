"""Connecting a job to Ray and keeping Ray's own output out of the user's way.

A job joins the cluster it was submitted to (``ray job submit`` sets RAY_ADDRESS for it), the
one ``--address`` or an exported RAY_ADDRESS names, and otherwise starts a fresh local
instance: never whatever cluster ``/tmp/ray/ray_current_cluster`` happens to point at, which
may be stale or somebody else's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import ray
import ray.data

from abaw_ray.console import CONSOLE_FD_ENV

# Set by Ray's job supervisor in the environment of a submitted job's entrypoint.
JOB_SUBMIT_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

RAY_LOGGERS = ("ray", "py.warnings")  # ray.tune, ray.train, ray.data ... propagate to "ray"


@dataclass(frozen=True)
class TrialResources:
    """What one trial asks of a cluster: the one home of these defaults (a search's trials,
    a single trial, its controls and folds all train with them)."""

    workers: int = 1  # data-parallel Ray Train workers of a trial
    gpus: float = 0.0  # GPUs of a trial, shared by its workers; 0.25 packs four trials on a GPU
    cpus_per_worker: float = 1.0  # CPUs of each Ray Train worker


RESOURCE_FLAGS = {  # flag -> (TrialResources field, type, help)
    "--workers-per-trial": ("workers", int, "data-parallel Ray Train workers of a trial"),
    "--gpus-per-trial": ("gpus", float, "GPUs per trial; 0.25 packs four on a GPU"),
    "--cpus-per-worker": ("cpus_per_worker", float, "CPUs per Ray Train worker"),
}


def add_resource_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every job that trains: what a trial asks for (``TrialResources``)."""
    for flag, (name, kind, text) in RESOURCE_FLAGS.items():
        default = getattr(TrialResources, name)
        parser.add_argument(flag, type=kind, help=f"{text} (default: {default:g})")


def trial_resources(args: argparse.Namespace) -> TrialResources:
    """``TrialResources`` with the flags given (``add_resource_flags``)."""
    given = {
        name: getattr(args, flag[2:].replace("-", "_"))
        for flag, (name, *_) in RESOURCE_FLAGS.items()
    }
    return TrialResources(**{k: v for k, v in given.items() if v is not None})


def add_corpus_flags(parser: argparse.ArgumentParser, task_note: str = "") -> None:
    """The flags of every job that reads a corpus: which one, which features, where the
    results go."""
    parser.add_argument("--data", type=Path, help="Aff-Wild2 root (default: the embedded corpus)")
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="without --data: the realistic embedded corpus (python -m abaw_ray.data synth "
        f"--realistic){task_note} (default: off)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny random-weight extractors on any corpus (default: off; always on an "
        "embedded corpus)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("outputs"), help="results folder (default: outputs)"
    )
    parser.add_argument(
        "--store",
        type=Path,
        help="feature store, shared storage on a cluster (default: OUTPUT/features)",
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        help="folder of <extractor>/ weight folders (default: $ABAW_RAY_WEIGHTS, then the "
        "Hugging Face cache)",
    )


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every job that say which Ray to use and what of Ray's output to show."""
    parser.add_argument(
        "--address",
        help="Ray cluster to join, e.g. ray://head:10001 or auto (default: RAY_ADDRESS, which "
        "ray job submit sets; else a new local instance, never a stale one)",
    )
    parser.add_argument(
        "--num-cpus", type=int, help="CPUs of a new local Ray instance (default: all)"
    )
    parser.add_argument(
        "--ray-logs",
        action="store_true",
        help="show Ray's logs, progress tables and workers' output here (default: off, they "
        "go to OUTPUT/logs/<name>.log)",
    )


# A smoke run of any job command (what the docs' runnable commands are checked with): the
# smallest settings that still run every stage, each job saying what it shrank.
SMOKE_ENV = "ABAW_RAY_SMOKE"
SMOKE_SAMPLES, SMOKE_EPOCHS = 2, 2  # trials of a search, epochs of a trial


def smoke_run() -> bool:
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submitted_job() -> bool:
    """Whether this process is the entrypoint of a ``ray job submit``."""
    return JOB_SUBMIT_ENV in os.environ


def starts_local_instance(address: str | None) -> bool:
    """Whether a job given ``--address`` ``address`` starts its own local Ray instance (which
    no autoscaler grows) rather than joining a cluster."""
    return (address or os.environ.get("RAY_ADDRESS") or "local") == "local"


def check_output_dir(output: Path, flag: str = "--output") -> str | None:
    """Why ``output`` cannot hold a job's results, or None: a path under a regular file, a
    folder this process may not write, or (under ``ray job submit``, where the job runs in a
    temporary copy of its working directory, deleted with the job) a relative path."""
    if submitted_job() and not output.is_absolute():
        return (
            f"{flag} {output} is relative: under ray job submit it would be written inside "
            f"the job's temporary working directory ({Path.cwd()}) and lost with it; pass an "
            "absolute path on storage every node shares, e.g. --output /shared/abaw"
        )
    existing = output.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {output}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {output}: {existing} is not writable"
    return None


# Ray Train's controller takes a worker's report only when it polls the workers (every 2 s by
# default), and a worker's next report waits for that: a trial whose epochs are shorter waits
# at every epoch (bench/trial_overhead.py). Polling twice a second lets short trials run at
# their own pace and costs a small call per worker.
TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    log_file: Path | None = None,
    show_logs: bool = False,
) -> None:
    """Join ``address`` (default: RAY_ADDRESS, which ``ray job submit`` sets) or start a local
    instance (of ``num_cpus`` CPUs, default all). Ray's logs, its workers' output and Python
    warnings go to ``log_file`` unless ``show_logs``; the job prints only its own lines."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    local = {}
    if starts_local_instance(address):
        # Ray Train's placement-group cleaner asks the State API for its controller, and the
        # State API finds the cluster by scanning the host: with another Ray instance on the
        # machine it fails, the cleaner dies, and a stopped trial's CPUs are never freed. The
        # instance's own dashboard address, inherited by every Ray process, settles it.
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        local = {"num_cpus": num_cpus, "dashboard_port": port}
    # Every process of the job (a job submitted with its own value keeps it).
    env = {} if TRAIN_POLL_ENV in os.environ else {TRAIN_POLL_ENV: TRAIN_POLL_S}
    ray.init(
        address=address,
        log_to_driver=show_logs,
        runtime_env={"env_vars": env} if env else None,
        **local,
    )
    if show_logs:
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    if log_file is not None:  # after ray.init, which sets up Ray's loggers
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.captureWarnings(True)
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            logger.handlers = [handler]
            logger.propagate = False


@contextlib.contextmanager
def job_on_ray(args: argparse.Namespace, kind: str, name: str, output: Path) -> Iterator[Console]:
    """The part of a job that runs on Ray. Says where its results and Ray's logs go, sends
    Ray's output to ``OUTPUT/logs/<name>.log`` (``--ray-logs``: shows it), connects
    (``add_ray_flags``), yields the console for the job's own lines, and shuts Ray down
    before the output is restored, so that nothing of Ray's follows the job's last line."""
    log_file = output / "logs" / f"{name}.log"
    print(
        f"{'resuming' if getattr(args, 'resume', False) else 'starting'} {kind} {name}: "
        f"results in {output}" + ("" if args.ray_logs else f", Ray's logs in {log_file}"),
        flush=True,
    )
    with ray_output_to(None if args.ray_logs else log_file) as console:
        init_ray(args.address, args.num_cpus, log_file, args.ray_logs)
        try:
            yield console
        finally:
            ray.shutdown()


def name_refusal(where: str, kind: str, resume: bool) -> str:
    """The error when ``--resume`` and the run at ``where`` disagree: ``--name`` means the
    same in every job, a run continued only with ``--resume``, never overwritten."""
    if resume:
        return f"error: {where} holds no {kind} to resume"
    return f"error: {where} holds a {kind} already: pass --resume to continue it, or another --name"


def resume_command(name: str) -> str:
    """The command that resumes this job's run (a search, a trial): the command it was
    started with, plus ``--resume --name NAME``."""
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    if "--name" in argv:
        i = argv.index("--name")
        del argv[i : i + 2]
    command = shlex.join(["python", sys.argv[0], *argv, "--resume", "--name", name])
    return f"ray job submit --working-dir . -- {command}" if submitted_job() else command


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the job outside a Tune run: stop, write nothing more."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stoppable_search() -> Iterator[threading.Event]:
    """Around ``Tuner.fit()``: SIGINT or SIGTERM asks Tune to stop the way it stops on its own
    SIGUSR1 (trials stopped, the experiment state saved once more, ``fit`` returns) and sets
    the event yielded, so the caller knows the search did not end. A second signal, or one
    before Tune is listening, raises ``Interrupted`` at once. Elsewhere in a job both signals
    raise ``Interrupted`` (``interruptible_job``)."""
    event = threading.Event()

    def handler(signum: int, frame: object) -> None:
        tune_listens = callable(signal.getsignal(signal.SIGUSR1))
        if event.is_set() or not tune_listens:
            raise Interrupted(signum)
        event.signum = signum  # type: ignore[attr-defined]
        event.set()
        signal.raise_signal(signal.SIGUSR1)

    # Tune would otherwise take SIGINT for itself and print its own (Tuner.restore) advice.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    with _stop_signals_call(handler):
        yield event


@contextlib.contextmanager
def interruptible_job() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` inside the block (SIGTERM would otherwise end
    the process without cleaning up)."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    with _stop_signals_call(handler):
        yield


@contextlib.contextmanager
def _stop_signals_call(handler: Any) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` inside the block; the previous handlers after."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class Console:
    """Where a job's own lines go while Ray's output is sent elsewhere: ``out`` / ``err``, and
    ``fd``, the descriptor of ``out`` (for Tune callbacks, which must pickle)."""

    out: TextIO
    err: TextIO
    fd: int


@contextlib.contextmanager
def ray_output_to(log_file: Path | None) -> Iterator[Console]:
    """Inside the block, all that this process writes to its standard output and error, Ray's
    and Tune's logs and tables, library warnings and native code's lines alike, is appended to
    ``log_file``; the job prints its own lines to the ``Console`` yielded, the terminal.
    ``log_file`` None: nothing is redirected.

    The output reaches the file through a pipe that a thread drains, so a log that cannot be
    written (a full disk) never fails a write of Ray's or Tune's: its lines go to the
    terminal instead, after one line saying so."""
    if log_file is None:
        os.environ[CONSOLE_FD_ENV] = str(sys.stdout.fileno())
        yield Console(sys.stdout, sys.stderr, sys.stdout.fileno())
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    console = Console(
        os.fdopen(os.dup(saved[0]), "w", buffering=1),
        os.fdopen(os.dup(saved[1]), "w", buffering=1),
        -1,
    )
    console.fd = console.out.fileno()
    os.environ[CONSOLE_FD_ENV] = str(console.fd)
    read_end, write_end = os.pipe()
    pump = threading.Thread(
        target=_drain_into, args=(read_end, log_file, os.dup(saved[1])), daemon=True
    )
    pump.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved):
            os.dup2(original, fd)  # the pipe's last write ends in this process close here
            os.close(original)
        pump.join(timeout=LOG_DRAIN_S)
        console.out.close()
        console.err.close()


LOG_DRAIN_S = 10  # how long a job waits, at its end, for the last of Ray's output to be logged


def _drain_into(read_end: int, log_file: Path, fallback: int) -> None:
    """Copy the pipe into ``log_file`` until every writer is gone; on the first failed write,
    say so once on ``fallback`` (the terminal's stderr) and copy there from then on."""
    failed = False
    with os.fdopen(read_end, "rb", buffering=0) as src, os.fdopen(fallback, "wb", 0) as term:
        try:
            log = open(log_file, "ab", buffering=0)  # noqa: SIM115 - closed below
        except OSError as err:
            log, failed = None, True
            term.write(
                f"note: cannot write Ray's log {log_file} ({err}); it follows here\n".encode()
            )
        while chunk := src.read(65536):
            if not failed:
                try:
                    log.write(chunk)
                    continue
                except OSError as err:
                    failed = True
                    term.write(
                        f"note: Ray's log {log_file} cannot be written ({err.strerror}); "
                        f"its lines follow here\n".encode()
                    )
            with contextlib.suppress(OSError):
                term.write(chunk)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
