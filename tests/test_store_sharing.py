"""One feature store shared by concurrent jobs (``--store`` on shared storage): a job opening
the store never removes another job's file in flight, and manifest updates from two processes
at once lose no entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from abaw_ray.features import get_spec
from abaw_ray.features.store import FeatureStore
from abaw_ray.fsutil import STALE_PARTIAL_S, atomic_path, is_partial

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "none (model-free descriptor)"

# A second job: opens the store, records ``count`` videos of its own under one key, one
# manifest update each, once the go file exists (so both jobs update at the same time).
RECORDER = """
import sys, time
from pathlib import Path
import numpy as np
from abaw_ray.features import get_spec
from abaw_ray.features.store import FeatureStore
root, prefix, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = FeatureStore(root)
key = store.open(get_spec("face_hog"), tiny=True, weights="none (model-free descriptor)")
Path(f"{go}.{prefix}.ready").touch()
while not go.exists():
    time.sleep(0.005)
for i in range(count):
    store.write(key, f"{prefix}{i:03d}", np.full((3, 441), i), mask=np.ones(3, bool))
"""


def test_opening_a_store_keeps_other_writers_files_and_clears_dead_ones(tmp_path):
    store = FeatureStore(tmp_path)
    spec = get_spec("face_hog")
    key = store.open(spec, tiny=True, weights=WEIGHTS)
    folder = tmp_path / key
    # A writer of another process, still running (this test's parent shell stands in).
    live = folder / f".v1.npy.w-{os.uname().nodename}-{os.getppid()}.abc123.partial.npy"
    live.write_bytes(b"in flight")
    # A writer of this host that is gone: a pid no process has.
    dead_pid = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100_000
    dead = folder / f".v2.npy.w-{os.uname().nodename}-{dead_pid}.def456.partial.npy"
    dead.write_bytes(b"left by a killed job")
    # Another host's writer: it cannot be asked, so only age makes it abandoned.
    other = folder / ".v3.npy.w-another-host-12.ghi789.partial.npy"
    other.write_bytes(b"?")
    old = folder / ".v4.npy.w-another-host-13.jkl012.partial.npy"
    old.write_bytes(b"?")
    week_ago = time.time() - STALE_PARTIAL_S - 7 * 86400
    os.utime(old, (week_ago, week_ago))
    assert all(is_partial(p) for p in (live, dead, other, old))

    store.open(spec, tiny=True, weights=WEIGHTS)  # what a second job does at its start
    assert live.exists() and other.exists()
    assert not dead.exists() and not old.exists()

    # This process's own write in flight while another job opens the store: it lands whole.
    with atomic_path(folder / "v5.npy", suffix=".npy") as tmp:
        np.save(tmp, np.ones((2, 441), np.float16))
        FeatureStore(tmp_path).open(spec, tiny=True, weights=WEIGHTS)
    assert np.load(folder / "v5.npy").shape == (2, 441)


def test_two_jobs_recording_into_one_manifest_at_once_lose_nothing(tmp_path):
    go = tmp_path / "go"
    jobs = {
        prefix: subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(tmp_path / "store"), prefix, "40", str(go)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for prefix in ("a", "b")
    }
    deadline = time.time() + 120
    while not all(Path(f"{go}.{p}.ready").exists() for p in jobs):
        assert time.time() < deadline and all(j.poll() is None for j in jobs.values())
        time.sleep(0.02)
    go.touch()
    errors = {p: j.communicate(timeout=300)[1] for p, j in jobs.items()}
    assert all(j.returncode == 0 for j in jobs.values()), errors
    manifest = json.loads((tmp_path / "store" / "face_hog" / "manifest.json").read_text())
    expected = sorted(f"{p}{i:03d}" for p in jobs for i in range(40))
    assert sorted(manifest["videos"]) == expected
    store = FeatureStore(tmp_path / "store")
    assert all(store.is_complete("face_hog", v, rows=3) for v in expected)
