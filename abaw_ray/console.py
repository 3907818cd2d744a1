"""The job's console: where its own lines and its progress bars go while Ray's output goes to
the job's log (``cluster.ray_output_to``). Its descriptor travels in ``CONSOLE_FD_ENV``, so
library code (corpus generation, extraction, shard building) shows progress without a console
handed down to it, and a resumed search's unpickled Tune callbacks find this process's one."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

CONSOLE_FD_ENV = "ABAW_RAY_CONSOLE_FD"


def console_fd() -> int:
    """The console's file descriptor (standard error outside a job)."""
    return int(os.environ.get(CONSOLE_FD_ENV, sys.stderr.fileno()))


def progress(
    iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it"
) -> Any:
    """A tqdm bar on the console, quiet (disabled) when the console is not a terminal, and
    gone when done: long work shows where it is without filling a log."""
    from tqdm import tqdm

    stream = os.fdopen(os.dup(console_fd()), "w")
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=stream,
        disable=not stream.isatty(),
        leave=False,
        dynamic_ncols=True,
    )
