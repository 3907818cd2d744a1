"""What a trial's driver processes hold, the memory a node pays for each trial in flight
besides its Train workers (quoted beside ``TRIAL_DRIVER_CPU`` and in docs).

    python bench/trial_drivers.py [--repeats 3]

Runs a search of two concurrent trials on the embedded corpus (its own local Ray instance, in
its own session) and samples, every 0.2 s, the processes of that session: a trial's driver
processes are every Ray actor of the trial but its Train workers (Tune's function actor,
Train's controller and the actors Train starts beside it, the stop flag). Prints, per
repeat, the peak over the run of their summed proportional set size (PSS: shared library
pages split among the processes sharing them) and resident size (RSS) per trial, then the
median of the repeats.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "tests" / "data" / "small_va.yaml"
# Actors a trial starts on its driver's side (one of each per running trial).
DRIVER_TITLES = (
    "ray::ImplicitFunc",
    "ray::TrainController",
    "ray::PlacementGroupCleaner",
    "ray::SynchronizationActor",
    "ray::DatasetManager",
    "ray::PreemptionWatcher",
    "ray::StopFlag",
)
TRIALS = 2


def _kb(pid: int, field: str, source: str) -> int:
    for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def sample(sid: int) -> tuple[Counter, int, int]:
    """(count of driver actors by title, their PSS and RSS in kB) in session ``sid``."""
    titles: Counter = Counter()
    pss = rss = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) != sid:
                continue
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            name = next((t for t in DRIVER_TITLES if title.startswith(t)), None)
            if name is None:
                continue
            pss += _kb(pid, "Pss", "smaps_rollup")
            rss += _kb(pid, "VmRSS", "status")
            titles[name] += 1
        except (OSError, ProcessLookupError):
            continue
    return titles, pss, rss


def run_once(corpus: Path, output: Path) -> tuple[float, float, Counter]:
    """Peak (PSS, RSS) per trial in GB over one search, and the actors seen at the peak."""
    job = subprocess.Popen(
        [sys.executable, "jobs/search_va.py", "--data", str(corpus), "--output", str(output)]
        + ["--space", str(SPACE), "--num-samples", str(TRIALS), "--num-cpus", str(TRIALS)]
        + ["--scheduler", "none"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    peak = (0, 0, Counter())
    try:
        while job.poll() is None:
            titles, pss, rss = sample(job.pid)
            if titles["ray::ImplicitFunc"] == TRIALS and pss > peak[0]:
                peak = (pss, rss, titles)
            time.sleep(0.2)
    finally:
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            try:
                if os.getsid(pid) == job.pid:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if job.returncode != 0:
        raise SystemExit(f"the search failed (exit {job.returncode}); see {output}/logs")
    return peak[0] / TRIALS / 1e6, peak[1] / TRIALS / 1e6, peak[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="searches (default: 3)")
    args = p.parse_args(argv)
    from abaw_ray.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        corpus = generate(Path(tmp) / "affwild2", videos=8, seed=3).root
        pss, rss = [], []
        for i in range(args.repeats):
            a, b, titles = run_once(corpus, Path(tmp) / f"out{i}")
            pss.append(a)
            rss.append(b)
            seen = ", ".join(f"{t[5:]} x{n}" for t, n in sorted(titles.items()))
            print(f"repeat {i + 1}: {a:.2f} GB PSS, {b:.2f} GB RSS per trial ({seen})", flush=True)
    print(
        f"trial drivers: {statistics.median(pss):.2f} GB PSS [{min(pss):.2f}, {max(pss):.2f}], "
        f"{statistics.median(rss):.2f} GB RSS per trial (median of {args.repeats})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
