"""A missing, empty or non-Aff-Wild2 ``--data``: a one-line error naming what is missing, a
non-zero exit, before Ray starts and before anything is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from abaw_ray.affwild2 import ANNOTATIONS, EXPR_CHALLENGE, FACE_DIR, VA_CHALLENGE, VAL_DIR
from abaw_ray.data.__main__ import main as data_main
from abaw_ray.data.corpus import preflight
from abaw_ray.errors import CorpusNotFoundError

REPO = Path(__file__).resolve().parents[1]


def _junk(root: Path) -> Path:
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    (root / "notes.txt").write_text("hello\n")
    return root


def _without(corpus_root: Path, tmp_path: Path, *parts: str) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(corpus_root, root)
    shutil.rmtree(root.joinpath(*parts))
    return root


@pytest.mark.parametrize(
    "make, missing",
    [
        (lambda c, t: t / "nonexistent", "no such directory"),
        (lambda c, t: (t / "file.txt").write_text("x") and t / "file.txt", "not a directory"),
        (lambda c, t: (t / "empty").mkdir() or t / "empty", f"no {FACE_DIR}"),
        (lambda c, t: _junk(t / "junk"), f"no {FACE_DIR}"),
        (lambda c, t: _without(c, t, ANNOTATIONS, VA_CHALLENGE), f"no {VA_CHALLENGE} folder"),
        (lambda c, t: _without(c, t, ANNOTATIONS, VA_CHALLENGE, VAL_DIR), f"no {VAL_DIR}"),
    ],
    ids=["missing", "a-file", "empty", "junk", "no-va-annotations", "no-va-validation"],
)
def test_preflight_names_what_is_missing(make, missing, corpus_root, tmp_path):
    root = make(corpus_root, tmp_path)
    with pytest.raises(CorpusNotFoundError, match=missing) as err:
        preflight(root, "va")
    assert "\n" not in str(err.value)


def test_preflight_passes_a_real_layout_and_checks_only_the_task_asked(corpus_root, tmp_path):
    preflight(corpus_root, "va")
    preflight(corpus_root, "expr")
    root = _without(corpus_root, tmp_path, ANNOTATIONS, EXPR_CHALLENGE)
    preflight(root, "va")
    preflight(root, None)  # extraction needs no annotations
    with pytest.raises(CorpusNotFoundError, match=EXPR_CHALLENGE):
        preflight(root, "expr")


def test_check_fails_on_a_corpus_without_labelled_videos(tmp_path, capsys):
    root = tmp_path / "faces-only"
    (root / FACE_DIR / "video1").mkdir(parents=True)
    assert data_main(["check", "--data", str(root)]) == 1
    assert "no task has labelled" in capsys.readouterr().err


@pytest.mark.parametrize(
    "job",
    [
        ["jobs/search_va.py"],
        ["jobs/search_expr.py"],
        ["jobs/train_va.py", "--features", "face_hog"],
        ["jobs/extract_features.py", "--extractors", "face_hog"],
    ],
)
def test_jobs_refuse_bad_data_before_starting_anything(job, tmp_path):
    output = tmp_path / "out"
    flags = (
        ["--store", str(output / "features")] if "extract" in job[0] else ["--output", str(output)]
    )
    proc = subprocess.run(
        [sys.executable, *job, "--data", str(tmp_path / "nonexistent"), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: {tmp_path / 'nonexistent'}: no such directory (--data is the Aff-Wild2 root)"
    ], proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr  # no Ray instance was started
    assert not output.exists()  # nothing written
