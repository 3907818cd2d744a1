"""Atomic writes: a reader sees the old file or the whole new one, never half of one; and
names of run folders that two jobs started in the same second do not share.

The new content goes to a hidden ``.<name>.w-<host>-<pid>.<random>.partial`` file beside the
target, is flushed to disk (fsync), renamed onto the target, and the folder entry is flushed
too, so a crash or a power cut leaves the old file or the new one. Nothing reads ``.partial``
files as results. ``remove_stale_partials`` clears what killed writers left behind and never
a live writer's file, whatever job or host it belongs to (several jobs may share a folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PARTIAL_MARK = ".partial"
FILE_MODE = 0o644  # results are for people and other jobs to read; mkstemp makes them 0600
# A partial file of another host, whose writer cannot be asked, counts as abandoned after this
# long unchanged (an atomic write lasts seconds to minutes).
STALE_PARTIAL_S = 24 * 3600
WRITER = re.compile(r"\.w-(?P<host>.+)-(?P<pid>\d+)\.[^.]+" + re.escape(PARTIAL_MARK))


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed, made 0644 and
    renamed onto ``path``. ``suffix`` keeps an extension that a writer insists on
    (``np.save`` appends ``.npy``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = f"w-{socket.gethostname()}-{os.getpid()}"
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{writer}.", suffix=f"{PARTIAL_MARK}{suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        _fsync(Path(tmp))
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_partial(path: str | Path) -> bool:
    """Whether ``path`` is the temporary file of an unfinished atomic write."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned(path: Path, now: float | None = None) -> bool:
    """Whether the partial file ``path`` was left by a writer that is gone: a process of this
    host that no longer runs, or any writer when unchanged for ``STALE_PARTIAL_S``."""
    now = time.time() if now is None else now
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed into place meanwhile
    if age > STALE_PARTIAL_S:
        return True
    found = WRITER.search(path.name)  # None: a writer that did not sign its file
    mine = found is not None and found["host"] == socket.gethostname()
    return mine and not _pid_alive(int(found["pid"]))


def remove_stale_partials(folder: str | Path) -> int:
    """Delete the abandoned partial files directly in ``folder`` (``is_abandoned``); how
    many. Safe while other jobs write there: a live writer's file stays."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if p.is_file() and is_partial(p) and is_abandoned(p):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


RESULTS_IGNORE = "# written by abaw-ray: results, not code (git and ray job submit skip them)\n*\n"


def ensure_results_dir(path: str | Path) -> Path:
    """Create a folder for a job's results, with a ``.gitignore`` of ``*`` in it, so that git
    and ``ray job submit --working-dir .`` (which reads ``.gitignore`` files) leave it out
    wherever it is: a results folder inside the repository never makes an upload too large."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        atomic_write_text(ignore, RESULTS_IGNORE)
    return path


STAMP = r"\d{8}-\d{6}-[0-9a-f]{4}"  # what run_stamp returns, as a regular expression


def run_stamp(started: float | None = None) -> str:
    """``20261203-194034-3f2a``: a run's start time (local, to the second, so names sort by
    time) and 4 random hex digits, so that jobs started in the same second on one storage
    (several drivers of a cluster, two users' scripts) never take one folder."""
    when = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    return f"{when}-{secrets.token_hex(2)}"
