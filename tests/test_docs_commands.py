"""Every command the docs mark runnable runs as written and ends the way the docs say.

The convention (docs/index.md, "Tests"): an HTML comment on the line right before a fenced code
block marks the block runnable,

    <!-- runnable: PREFIX -->        a command that starts no Ray (the fast tier)
    <!-- runnable slow: PREFIX -->   a command that starts Ray, as every job does: marked slow

where PREFIX is the start of the command's expected last line of output on standard output
(the line's leading blanks aside; an empty PREFIX checks the exit status alone). A marked block
holds one command: lines joined by backslash continuations are one. Commands against a
cluster (ray up, kubectl, ray job submit, docker) are not marked, nor are the test commands
(a test would run the suite it is part of), nor servers (mlflow ui).

Each marked command runs with ``bash -c`` from the repository root, with the tests'
environment plus ABAW_RAY_SMOKE=1 (every job at its smallest settings: a search 2 trials of 2
epochs, a single trial 2 epochs) and this Python's folder first on PATH, so ``python`` and
``pip`` are the ones running the tests. It writes where the docs say: under outputs/, which
git ignores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md")))
SMOKE = "ABAW_RAY_SMOKE"  # abaw_ray.runtime.SMOKE_ENV (checked below)
MAX_SLOW = 5  # marked commands that start Ray: each runs a minute or more in the full suite
TIMEOUT_S = {False: 300, True: 900}  # a hung command fails rather than stalls the suite
MAIN_COMMAND = "python jobs/search_va.py"  # the README's quick start
CLUSTER_WORDS = ("ray up", "ray down", "ray exec", "ray job submit", "kubectl", "docker")

MARK = re.compile(r"^<!--\s*runnable(?P<slow> slow)?:(?P<prefix>.*?)-->\s*$")
FENCE = re.compile(r"^(`{3,}|~{3,})")


@dataclass(frozen=True)
class Block:
    """A fenced block marked runnable: where its first line is, its lines, and the marker's
    tier and expected last-line prefix."""

    doc: Path
    line: int  # 1-based line of the block's first line
    slow: bool
    prefix: str
    lines: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    @property
    def command(self) -> str:
        return "\n".join(self.lines).strip()

    def commands(self) -> list[str]:
        """The block's commands: backslash-continued lines joined; blank lines and comment
        lines are none."""
        out: list[str] = []
        pending = ""
        for line in self.lines:
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            if pending.strip() and not pending.lstrip().startswith("#"):
                out.append(pending.strip())
            pending = ""
        if pending.strip():
            out.append(pending.strip())
        return out


def parse(doc: Path) -> tuple[list[Block], list[str]]:
    """The runnable blocks of ``doc``, and what is wrong with its markers (a marker not right
    before a fence, a fence never closed, a comment that looks like a marker and is not one)."""
    lines = doc.read_text().splitlines()
    blocks, problems = [], []
    where = doc.relative_to(REPO)
    for i, text in enumerate(lines):
        if "runnable" not in text or not text.lstrip().startswith("<!--"):
            continue
        mark = MARK.match(text.strip())
        if mark is None:
            problems.append(
                f"{where}:{i + 1}: {text.strip()!r} is not <!-- runnable: PREFIX --> or "
                "<!-- runnable slow: PREFIX -->"
            )
            continue
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            problems.append(f"{where}:{i + 1}: the marker is not right before a fenced block")
            continue
        end = next(
            (j for j in range(i + 2, len(lines)) if lines[j].strip() == fence.group(1)), None
        )
        if end is None:
            problems.append(f"{where}:{i + 2}: the fenced block is never closed")
            continue
        blocks.append(
            Block(
                doc=doc,
                line=i + 3,
                slow=mark.group("slow") is not None,
                prefix=mark.group("prefix").strip(),
                lines=tuple(lines[i + 2 : end]),
            )
        )
    return blocks, problems


def runnable_blocks() -> tuple[list[Block], list[str]]:
    blocks, problems = [], []
    for doc in DOCS:
        found, wrong = parse(doc)
        blocks += found
        problems += wrong
    return blocks, problems


BLOCKS, PROBLEMS = runnable_blocks()


def test_the_markers_are_well_formed_and_each_block_holds_one_command():
    problems = list(PROBLEMS)
    for b in BLOCKS:
        n = len(b.commands())
        if n != 1:
            problems.append(f"{b.id}: a marked block holds one command, this one {n}")
        if any(word in b.command for word in CLUSTER_WORDS):
            problems.append(f"{b.id}: a cluster command is not marked runnable: {b.command!r}")
        if ("jobs/" in b.command or "bench/" in b.command) and not b.slow:
            problems.append(f"{b.id}: a job starts Ray: mark it <!-- runnable slow: ... -->")
    assert not problems, "\n".join(problems)


def test_the_readme_main_command_is_marked():
    main = [b for b in BLOCKS if b.doc == REPO / "README.md" and MAIN_COMMAND in b.command]
    assert main, f"README.md marks no block running {MAIN_COMMAND!r}"
    assert all(b.slow and b.prefix == "cost:" for b in main), [(b.id, b.prefix) for b in main]


def test_few_slow_commands_are_marked():
    slow = [b.id for b in BLOCKS if b.slow]
    assert len(slow) <= MAX_SLOW, f"{len(slow)} slow commands marked (at most {MAX_SLOW}): {slow}"


def test_the_smoke_switch_is_the_jobs_own():
    from abaw_ray.runtime import SMOKE_ENV

    assert SMOKE_ENV == SMOKE


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.slow else []) for b in BLOCKS],
)
def test_a_documented_command_runs_and_ends_as_documented(block: Block):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    run = subprocess.run(
        ["bash", "-c", block.command],
        cwd=REPO,
        env={**os.environ, SMOKE: "1", "PATH": path},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S[block.slow],
    )
    shown = f"$ {block.command}\n--- stdout\n{_tail(run.stdout)}\n--- stderr\n{_tail(run.stderr)}"
    assert run.returncode == 0, f"{block.id}: exit status {run.returncode}\n{shown}"
    printed = [line.strip() for line in run.stdout.splitlines() if line.strip()]
    assert printed, f"{block.id}: printed nothing\n{shown}"
    assert printed[-1].startswith(block.prefix), (
        f"{block.id}: the last line should start with {block.prefix!r}, not {printed[-1]!r}"
        f"\n{shown}"
    )
