"""Do the docs' quoted outputs still come out? Runs every command that README.md and docs/ quote
output of, and compares each quoted line with the line of the same shape in what the command
prints now.

A quoted output is a fenced ``text`` block right after an HTML comment naming its command:

    <!-- figures: python jobs/search_va.py --num-cpus 2 -->
    ```text
    cost: 8 trials (1 CPU, 0 GPU each) held 0.062 CPU-hours ...
    ```

Scores (numbers with 4 or more decimals) must come out exactly; other numbers (hours, seconds,
counts that depend on the machine's speed) within ``--tolerance`` of the quoted value. Prints
one line per quoted line (same, drifted or missing) and exits 1 when any drifted.

    python bench/docs_figures.py [--tolerance 0.5] [FILE ...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^<!-- figures: (.+?) -->\s*$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SCORE_DECIMALS = 4  # a number with this many decimals or more is a score: it must match


@dataclass(frozen=True)
class Quote:
    doc: Path
    line: int
    command: str
    lines: tuple[str, ...]


def quotes(paths: list[Path]) -> list[Quote]:
    """Every ``<!-- figures: CMD -->`` + fenced text block of ``paths``."""
    out = []
    for path in paths:
        text = path.read_text().splitlines()
        for i, line in enumerate(text):
            m = MARK.match(line)
            if not m or i + 1 >= len(text) or not text[i + 1].startswith("```"):
                continue
            end = next(j for j in range(i + 2, len(text)) if text[j].startswith("```"))
            out.append(Quote(path, i + 1, m.group(1), tuple(text[i + 2 : end])))
    return out


def shape(line: str) -> str:
    return NUMBER.sub("#", line.strip())


def drift(quoted: str, now: str, tolerance: float) -> list[str]:
    """The numbers of ``quoted`` that ``now`` (a line of the same shape) no longer gives."""
    wrong = []
    for q, n in zip(NUMBER.findall(quoted), NUMBER.findall(now)):
        decimals = len(q.split(".")[1]) if "." in q else 0
        if decimals >= SCORE_DECIMALS:
            if q != n:
                wrong.append(f"{q} -> {n}")
        elif abs(float(n) - float(q)) > tolerance * max(abs(float(q)), 1e-9):
            wrong.append(f"{q} -> {n} (beyond {tolerance:.0%})")
    return wrong


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/*.md")
    p.add_argument("--tolerance", type=float, default=0.5, help="relative, for non-scores")
    args = p.parse_args()
    files = [f.resolve() for f in args.files] or [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
    ]
    drifted = 0
    for q in quotes(files):
        print(f"{q.doc.relative_to(REPO)}:{q.line}: $ {q.command}")
        run = subprocess.run(["bash", "-c", q.command], cwd=REPO, capture_output=True, text=True)
        printed = {shape(line): line for line in run.stdout.splitlines()}
        for quoted in q.lines:
            now = printed.get(shape(quoted))
            if now is None:
                drifted += 1
                print(f"  missing (exit status {run.returncode}): {quoted.strip()}")
                continue
            wrong = drift(quoted, now, args.tolerance)
            drifted += bool(wrong)
            print(f"  {'drifted: ' + ', '.join(wrong) if wrong else 'same'}: {now.strip()}")
    print(f"docs figures: {drifted} line(s) drifted")
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
