"""Helpers for tests that start Ray: stop exactly the processes a test started, by id."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from abaw_ray.pause import PAUSE_AT_ENV, PAUSE_DIR_ENV


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def kill_session(sid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of the session a test started with ``start_new_session=True``
    (its driver and the Ray instance that driver launched), then wait for them to go."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def console_script(name: str) -> str:
    """A console script of this environment (``ray``, ``mlflow``), found next to the Python
    running the tests: an activated venv and a bare ``venv/bin/python -m pytest`` alike."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {name} next to {sys.executable}; install the project")
    return str(path)


def venv_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with this environment's scripts first on PATH, as an
    activated venv has them: what ``ray job submit``'s ``python ...`` entrypoint resolves."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def ray_token_env(folder: Path) -> dict[str, str]:
    """Token authentication made by the test itself, whatever HOME holds: a fresh token in
    ``folder`` and the variables that make a head, its nodes and its clients use it (what
    ``ray get-auth-token --generate`` and ``RAY_AUTH_MODE=token`` do for a user)."""
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


class Pauses:
    """The test's side of ``abaw_ray.pause``: the environment that makes a job pause at
    ``points``, and waits on the states the job reports there."""

    def __init__(self, folder: Path, *points: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.env = {PAUSE_DIR_ENV: str(folder), PAUSE_AT_ENV: ",".join(points)}

    def reached(self, point: str) -> list[str]:
        """Keys of the processes that reached ``point``, in the order they got there."""
        found = sorted(self.folder.glob(f"{point}*.reached"), key=lambda p: p.stat().st_mtime_ns)
        return [p.name[len(point) + 1 : -len(".reached")] for p in found]

    def times(self, point: str) -> dict[str, int]:
        """How often each key reached ``point``."""
        return {
            p.name[len(point) + 1 : -len(".reached")]: len(p.read_text().split())
            for p in self.folder.glob(f"{point}*.reached")
        }

    def wait(self, point: str, count: int, proc=None, timeout: float = 900.0) -> list[str]:
        """Until ``count`` processes have reached ``point``; their keys. Fails if ``proc``
        ends first or after ``timeout`` seconds (generous: a condition, not a time, is
        awaited)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            keys = self.reached(point)
            if len(keys) >= count:
                return keys
            if proc is not None and proc.poll() is not None:
                raise AssertionError(
                    f"the job ended (rc {proc.returncode}) before {point} #{count}"
                )
            time.sleep(0.1)
        raise AssertionError(f"{point} reached {len(self.reached(point))} times, not {count}")

    def release(self, point: str, key: str = "") -> None:
        """Lets the process paused at ``point`` with ``key`` go on; without a key, every
        process at ``point``, now and later."""
        (self.folder / (f"{point}.{key}.go" if key else f"{point}.go")).touch()

    def hold_at(self, point: str, count: int, proc=None) -> str:
        """Lets the first ``count - 1`` processes reaching ``point`` go on and holds the
        ``count``-th there; its key."""
        for n in range(1, count):
            self.release(point, self.wait(point, n, proc)[n - 1])
        return self.wait(point, count, proc)[count - 1]
