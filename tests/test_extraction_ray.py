"""Ray Data extraction end to end on the embedded corpus: resume after a kill, bad inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from abaw_ray.data import load_corpus
from abaw_ray.features import create_extractor
from abaw_ray.features.pipeline import ExtractionConfig, decode_faces, extract_features
from abaw_ray.features.store import FeatureStore
from tests.media import write_video_without_audio
from tests.raytools import Pauses, kill_session, session_pids

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
JOB = [sys.executable, str(REPO / "jobs" / "extract_features.py")]


def _run_job(args: list[str], pauses: Pauses | None = None, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    return subprocess.Popen(
        JOB + args,
        cwd=REPO,
        env={**env, **(pauses.env if pauses else {})},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _args(corpus_root: Path, store_dir: Path, extractors: str) -> list[str]:
    return [
        "--data",
        str(corpus_root),
        "--store",
        str(store_dir),
        "--extractors",
        extractors,
        "--tiny",
        "--num-cpus",
        "2",
        "--batch-size",
        "8",
    ]


def test_killed_extraction_resumes_without_recomputing(corpus_root, tmp_path):
    store_dir = tmp_path / "store"
    args = _args(corpus_root, store_dir, "mobilenetv3,logmel")
    manifest = store_dir / "mobilenetv3.tiny" / "manifest.json"
    total = len(load_corpus(corpus_root).videos)
    # The driver pauses once the first video is in the manifest; the kill lands there.
    pauses = Pauses(tmp_path / "pause", "video_recorded")
    proc = _run_job(args, pauses)
    try:
        (first,) = pauses.wait("video_recorded", 1, proc)
    finally:
        kill_session(proc.pid)
        proc.communicate()
    done = json.loads(manifest.read_text())["videos"]
    assert list(done) == [first] and total > 1
    mtimes = {v: (store_dir / "mobilenetv3.tiny" / f"{v}.npy").stat().st_mtime_ns for v in done}
    # Nothing half-written: every array present loads whole.
    for f in store_dir.rglob("*.npy"):
        np.load(f)

    rerun = _run_job(args)
    out, _ = rerun.communicate(timeout=300)
    kill_session(rerun.pid)
    assert rerun.returncode == 0, out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("mobilenetv3.tiny"))
    written, skipped = int(line.split()[2]), int(line.split()[5])
    assert skipped == len(done) and written == total - len(done), line
    store = FeatureStore(store_dir)
    final = store.manifest("mobilenetv3.tiny")["videos"]
    assert len(final) == total
    for v, t in mtimes.items():  # finished videos were not recomputed
        assert (store_dir / "mobilenetv3.tiny" / f"{v}.npy").stat().st_mtime_ns == t
    corpus = load_corpus(corpus_root)
    for v in final:
        assert store.is_complete("mobilenetv3.tiny", v, corpus.num_frames(v))
        assert store.is_complete("logmel", v)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # "local": a new instance even where another runs on the host (ray.init alone joins it)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def _copy_with_bad_inputs(src: Path, dst: Path) -> tuple[str, str, str]:
    shutil.copytree(src, dst, symlinks=True)
    faces = sorted((dst / "cropped_aligned").iterdir())
    corrupt = sorted(faces[0].glob("*.jpg"))[5]
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated JPEG
    empty = sorted(faces[1].glob("*.jpg"))[7]
    empty.write_bytes(b"")
    # Replace one raw video with a video-only file (no audio stream).
    raw = sorted((dst / "batch2").glob("*.mp4"))[0]
    raw.unlink()
    write_video_without_audio(raw, frames=5)
    return f"{faces[0].name}/{corrupt.name}", f"{faces[1].name}/{empty.name}", raw.stem


def test_bad_images_and_silent_video_are_reported_not_fatal(corpus_root, tmp_path, ray_local):
    corrupt, empty, silent = _copy_with_bad_inputs(corpus_root, tmp_path / "corpus")
    corpus = load_corpus(tmp_path / "corpus")
    store = FeatureStore(tmp_path / "store")
    report = extract_features(
        corpus, store, ExtractionConfig(extractors=("face_hog", "wavlm_large"), tiny=True)
    )
    assert set(report.bad_frames) == {corrupt, empty}
    assert report.gaps["wavlm_large.tiny"] == {
        silent: f"{corpus.videos[silent].media.path}: no audio stream"
    }
    assert "no audio stream" in report.summary() and corrupt in report.summary()
    usable = [v for v in corpus.videos if v not in corpus.unusable]
    assert sorted(report.written["face_hog"]) == sorted(usable)
    assert len(report.written["wavlm_large.tiny"]) == len(usable) - 1
    video, name = corrupt.split("/")
    stored = store.load("face_hog", video)
    k = int(name.split(".")[0]) - 1
    assert not stored.mask[k]  # flagged
    assert stored.values.shape[0] == corpus.num_frames(video)
    # Rows from every batch of the stream sit at their own frames: each equals the descriptor
    # of its own image; the flagged frame holds a nearest readable frame's row.
    hog = create_extractor("face_hog")
    readable = np.flatnonzero(stored.mask)
    for row in (readable[0], readable[len(readable) // 2], readable[-1]):
        path = np.array([str(corpus.videos[video].face_path(int(row) + 1))], dtype=object)
        expected = hog(decode_faces({"path": path})["image"]).astype(np.float16)[0]
        np.testing.assert_array_equal(stored.values[row], expected)
    gap = np.abs(readable - k).min()
    nearest = [j for j in readable if abs(j - k) == gap]
    assert any(np.array_equal(stored.values[k], stored.values[j]) for j in nearest)
    left = [v for v in usable if v.endswith("_left")][0]
    right = left.replace("_left", "_right")
    np.testing.assert_array_equal(
        store.load("wavlm_large.tiny", left).values, store.load("wavlm_large.tiny", right).values
    )
    manifest = store.manifest("face_hog")
    assert manifest["videos"][video]["unreadable"] == {name: report.bad_frames[corrupt]}
    assert manifest["weights"] == "none (model-free descriptor)"
    assert store.manifest("wavlm_large.tiny")["weights"] == "tiny-random(seed=0)"


def test_a_writer_killed_mid_extraction_leaves_no_truncated_array(corpus_root, tmp_path):
    store_dir = tmp_path / "store"
    args = _args(corpus_root, store_dir, "mobilenetv3")
    manifest = store_dir / "mobilenetv3.tiny" / "manifest.json"
    total = len(load_corpus(corpus_root).videos)
    # The driver pauses once the first video is in the manifest; the writer is killed there.
    pauses = Pauses(tmp_path / "pause", "video_recorded")
    proc = _run_job(args, pauses)
    try:
        (first,) = pauses.wait("video_recorded", 1, proc)
        # The worker that writes the arrays, found among this job's own processes.
        (writer,) = [
            pid
            for pid in session_pids(proc.pid)
            if b"FaceWriter" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        os.kill(writer, signal.SIGKILL)
        pauses.release("video_recorded")  # every video from now on
        out, _ = proc.communicate(timeout=300)
    finally:
        kill_session(proc.pid)
    done = json.loads(manifest.read_text())["videos"]
    # Ray Data restarts the writer and retries the block it lost: a video whose rows were all
    # in that block is written; one with rows in earlier blocks is reported, never dropped
    # silently, and the job fails so that a rerun finishes it.
    if proc.returncode == 0:
        assert len(done) == total, out[-3000:]
    else:
        assert proc.returncode == 1 and "rerun the same command" in out, out[-3000:]
        unfinished = re.search(r"unfinished: (\d+) video", out)
        assert unfinished and int(unfinished.group(1)) == total - len(done), out[-3000:]
    for f in store_dir.rglob("*.npy"):  # whatever was written loads whole
        np.load(f)

    rerun = _run_job(args)
    out, _ = rerun.communicate(timeout=300)
    kill_session(rerun.pid)
    assert rerun.returncode == 0, out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("mobilenetv3.tiny"))
    assert int(line.split()[2]) == total - len(done) and int(line.split()[5]) == len(done)
    store = FeatureStore(store_dir)
    corpus = load_corpus(corpus_root)
    final = store.manifest("mobilenetv3.tiny")["videos"]
    assert len(final) == total
    for v in final:
        assert store.is_complete("mobilenetv3.tiny", v, corpus.num_frames(v))
    assert not list(store_dir.rglob("*.partial*"))
