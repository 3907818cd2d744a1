"""The suite's own rules: under ``--fail-on-skip`` (what CI runs) a skipped test fails unless it
is marked ``may_skip``; markers are declared (``--strict-markers``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SKIPPING = """
import pytest

def test_needs_a_wheel():
    pytest.skip("the wheel is absent")

@pytest.mark.may_skip
def test_needs_a_gpu():
    pytest.skip("no GPU here")

def test_passes():
    pass
"""


def _pytest(folder: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *flags, str(folder)],
        cwd=REPO,  # this project's conftest and pyproject settings
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_fails_under_fail_on_skip_unless_marked_may_skip(tmp_path):
    folder = REPO / "tests" / f"_skipcheck_{tmp_path.name}"  # under tests/: our conftest
    folder.mkdir()
    try:
        (folder / "test_skipping.py").write_text(SKIPPING)
        strict = _pytest(folder, "--fail-on-skip")
        plain = _pytest(folder)
    finally:
        shutil.rmtree(folder)
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 passed, 1 skipped" in strict.stdout, strict.stdout
    assert "FAILED" in strict.stdout and "test_needs_a_wheel" in strict.stdout
    assert plain.returncode == 0 and "1 passed, 2 skipped" in plain.stdout, plain.stdout


def test_an_undeclared_marker_is_an_error(tmp_path):
    folder = REPO / "tests" / f"_markercheck_{tmp_path.name}"
    folder.mkdir()
    try:
        (folder / "test_marked.py").write_text(
            "import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n"
        )
        run = _pytest(folder)
    finally:
        shutil.rmtree(folder)
    assert run.returncode != 0 and "'slwo' not found in `markers`" in run.stdout + run.stderr
