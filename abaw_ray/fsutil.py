"""Atomic writes: a reader sees the old file or the whole new one, never half of one.

The new content goes to a hidden ``.<name>.<random>.partial`` file beside the target, is
flushed to disk (fsync), renamed onto the target, and the folder entry is flushed too, so a
crash or a power cut leaves the old file or the new one. Nothing reads ``.partial`` files as
results; ``remove_partials`` clears what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PARTIAL_MARK = ".partial"
FILE_MODE = 0o644  # results are for people and other jobs to read; mkstemp makes them 0600


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
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f"{PARTIAL_MARK}{suffix}", dir=path.parent
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


def remove_partials(folder: str | Path) -> int:
    """Delete the leftovers of killed atomic writes directly in ``folder``; how many.
    Call it only where no writer is running (a job's start, before its own writes)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if p.is_file() and is_partial(p):
            p.unlink(missing_ok=True)
            removed += 1
    return removed
