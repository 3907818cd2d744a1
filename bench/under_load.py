"""The slow tier under load: ``--runs`` runs in a row of ``pytest -m slow`` with ``--burners``
busy processes beside them, each run from an empty HOME if asked. A suite whose tests wait on
states, never on times, passes on a busy machine as on an idle one.

    python bench/under_load.py                       # 3 runs beside 2 CPU burners
    python bench/under_load.py --runs 1 --burners 0 --empty-home

Prints one line per run (exit status, counts, wall time) and a last line with the tally. It
stops only the burners it started, by process id; each pytest run stops the Ray instances its
tests started.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BURN = "while True:\n    pass\n"  # one busy core each


def start_burners(n: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True) for _ in range(n)
    ]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()


def run_suite(marker: str, extra: list[str], home: Path | None, log: Path) -> tuple[int, str]:
    """One pytest run of the tests marked ``marker``; (exit status, pytest's last line)."""
    env = dict(os.environ)
    if home is not None:  # nothing of the user's: no ~/.ray token, no caches
        env["HOME"] = str(home)
        for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "ABAW_RAY_CACHE", "RAY_AUTH_TOKEN_PATH"):
            env.pop(var, None)
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider"]
    with log.open("w") as out:
        proc = subprocess.run(
            # -rP: the log keeps what passing tests print (the cluster test's figures)
            [*cmd, "--fail-on-skip", "-rP", *extra],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed)", ln)), "")
    return proc.returncode, summary.strip("= ")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs in a row (default: 3)")
    p.add_argument("--burners", type=int, default=2, help="busy processes beside (default: 2)")
    p.add_argument("--marker", default="slow", help="pytest -m expression (default: slow)")
    p.add_argument(
        "--empty-home", action="store_true", help="each run with a new empty HOME (default: off)"
    )
    p.add_argument("--logs", type=Path, help="folder for each run's log (default: a temp folder)")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = p.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="under_load-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.runs} run(s) of pytest -m {args.marker!r} beside {args.burners} CPU burner(s)"
        f"{', each from an empty HOME' if args.empty_home else ''}; logs in {logs}",
        flush=True,
    )
    burners = start_burners(args.burners)
    passed = 0
    try:
        for i in range(1, args.runs + 1):
            started = time.time()
            with tempfile.TemporaryDirectory(prefix="home-") as home:
                rc, summary = run_suite(
                    args.marker,
                    args.pytest_args,
                    Path(home) if args.empty_home else None,
                    logs / f"run{i}.log",
                )
            passed += rc == 0
            print(
                f"run {i}: exit {rc}, {summary or 'no summary'}, {time.time() - started:.0f} s",
                flush=True,
            )
    finally:
        stop(burners)
    print(f"under load: {passed}/{args.runs} runs passed")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
