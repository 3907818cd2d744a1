"""Errors for malformed input: every one names the file and, where it has one, the line."""

from __future__ import annotations

from pathlib import Path


class InputFormatError(ValueError):
    """A corpus, template or submission file that does not follow its format."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        super().__init__(f"{where}: {message}")


class CorpusNotFoundError(ValueError):
    """A ``--data`` root that is missing, empty or not laid out as Aff-Wild2: one line naming
    what is missing, raised before a job starts anything."""


class BadInputError(ValueError):
    """Input a job cannot use (a corpus without training videos, held-out videos it lacks),
    said in one line: the job prints it and exits 2."""
