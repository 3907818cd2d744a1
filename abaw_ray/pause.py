"""Pause points: how a test stops a job at a named state instead of after a time.

A job marks the states a test may want to stop it at (``pause_point("before_ensemble")``).
They do nothing unless ``ABAW_RAY_PAUSE_DIR`` names a folder and ``ABAW_RAY_PAUSE_AT`` lists
the point (comma-separated names). Then the process that reaches the point appends its
process id to ``<dir>/<point>.<key>.reached`` (a line each time: a test can count how often a
point was reached) and waits until ``<dir>/<point>.<key>.go`` (that process) or
``<dir>/<point>.go`` (every process at the point, from then on) exists, or its ``stop``
callable says the work was stopped. The test waits for the ``reached`` file, then
kills, interrupts or lets the job go on: the kill lands at that state on a busy machine as on
an idle one.

The variables reach Ray workers the way every environment variable of a local instance does
(the driver starts Ray), so points inside a trial work too. They are for tests only: nothing
sets them in a real run.

Points in this code base: ``trial_start`` (a trial's Tune function, keyed by trial id, before
its trainer starts), ``worker_start`` (a Train worker, keyed by its Train run's name, before
it trains), ``checkpoint_reported`` (a Train worker, keyed the same, after it reported a
checkpoint: a test can lose a node whose trial is known to be mid-run), ``before_ensemble``
(the search driver, after its trials table), ``video_recorded`` (the extraction driver, after
a video enters a manifest; keyed by video).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

PAUSE_DIR_ENV = "ABAW_RAY_PAUSE_DIR"  # folder of reached/go files (tests only)
PAUSE_AT_ENV = "ABAW_RAY_PAUSE_AT"  # comma-separated names of the points that pause
POLL_S = 0.05  # how often a paused process looks for its go file


def pause_point(name: str, key: str = "", stop: Callable[[], bool] | None = None) -> bool:
    """Pause here if a test asked for point ``name`` (see the module's text); whether it
    paused. ``key`` tells apart processes reaching the same point (a trial id, a video)."""
    folder = os.environ.get(PAUSE_DIR_ENV)
    wanted = os.environ.get(PAUSE_AT_ENV, "").split(",")
    if not folder or name not in wanted:
        return False
    base = f"{name}.{key}" if key else name
    go = (Path(folder) / f"{base}.go", Path(folder) / f"{name}.go")
    with (Path(folder) / f"{base}.reached").open("a") as reached:
        reached.write(f"{os.getpid()}\n")
    while not any(g.exists() for g in go) and not (stop is not None and stop()):
        time.sleep(POLL_S)
    return True
