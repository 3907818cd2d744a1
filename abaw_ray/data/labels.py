"""Aff-Wild2 annotation files: the per-frame label reader, and the shifted-label control.

Line k after the header is frame k (``00001.jpg`` is line 1). VA marks an unannotated frame
with -5, EXPR with -1, AU with a line of twelve -1 (``affwild2.VA_INVALID`` / ``EXPR_INVALID``
/ ``AU_INVALID``); each becomes ``valid == False`` here and is never scored or trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw_ray.affwild2 import AU_INVALID, EXPR_INVALID, LABEL_HEADERS, VA_INVALID
from abaw_ray.errors import InputFormatError
from abaw_ray.tasks import AU_NAMES, NUM_AUS, NUM_EXPR_CLASSES, VA_COLUMNS, Task


@dataclass(frozen=True, eq=False)
class FrameLabels:
    """One video's labels for one task on the label timeline (index 0 is frame 00001.jpg).

    ``values`` is float32 [T, 2] (valence, arousal) for VA, int64 [T] for EXPR and uint8
    [T, 12] of 0/1 for AU (0 on unannotated frames); ``valid`` is bool [T].
    """

    task: Task
    video: str
    path: Path
    values: np.ndarray
    valid: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.valid.shape[0])


def _parse_header(path: Path, first_line: str, task: Task) -> None:
    got = tuple(c.strip() for c in first_line.strip().split(","))
    expected = LABEL_HEADERS[task]
    if tuple(c.lower() for c in got) != tuple(c.lower() for c in expected):
        raise InputFormatError(
            path, 1, f"header {','.join(got)!r}; expected {','.join(expected)!r}"
        )


def _rows(path: Path) -> tuple[str, list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputFormatError(path, None, f"not UTF-8 text ({err})") from err
    lines = text.splitlines()
    if not lines:
        raise InputFormatError(path, 1, "empty file; expected a header line")
    body = lines[1:]
    # A trailing blank line is common; a blank line in the middle is not a frame.
    while body and not body[-1].strip():
        body.pop()
    for i, line in enumerate(body):
        if not line.strip():
            raise InputFormatError(path, i + 2, "blank line inside the frame labels")
    return lines[0], body


def read_va_labels(path: str | Path, video: str | None = None) -> FrameLabels:
    """Read a VA_Estimation_Challenge file; -5 marks an unannotated frame."""
    path = Path(path)
    header, body = _rows(path)
    _parse_header(path, header, "va")
    values = np.empty((len(body), 2), dtype=np.float64)
    for i, line in enumerate(body):
        parts = line.split(",")
        if len(parts) != 2:
            raise InputFormatError(
                path, i + 2, f"{line!r}: expected 2 values {','.join(VA_COLUMNS)!r}"
            )
        try:
            values[i] = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise InputFormatError(path, i + 2, f"{line!r}: not a number") from None
    invalid = values == VA_INVALID
    finite = np.isfinite(values)
    in_range = finite & (values >= -1.0) & (values <= 1.0)
    bad = ~(in_range | invalid)
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        raise InputFormatError(
            path,
            i + 2,
            f"{body[i]!r}: VA values must lie in [-1, 1] (or be {VA_INVALID:g} for unannotated)",
        )
    valid = ~invalid.any(axis=1)
    return FrameLabels("va", video or path.stem, path, values.astype(np.float32), valid)


def read_expr_labels(path: str | Path, video: str | None = None) -> FrameLabels:
    """Read an EXPR challenge file: one class 0..7 per line, -1 for an invalid frame."""
    path = Path(path)
    header, body = _rows(path)
    _parse_header(path, header, "expr")
    values = np.empty(len(body), dtype=np.int64)
    for i, line in enumerate(body):
        s = line.strip()
        try:
            v = int(s)
        except ValueError:
            raise InputFormatError(path, i + 2, f"{line!r}: expected an integer class") from None
        if v != EXPR_INVALID and not 0 <= v < NUM_EXPR_CLASSES:
            raise InputFormatError(
                path,
                i + 2,
                f"{line!r}: class must be 0..{NUM_EXPR_CLASSES - 1} "
                f"(or {EXPR_INVALID} for invalid)",
            )
        values[i] = v
    return FrameLabels("expr", video or path.stem, path, values, values != EXPR_INVALID)


def read_au_labels(path: str | Path, video: str | None = None) -> FrameLabels:
    """Read an AU_Detection_Challenge file: twelve 0/1 values per line (``AU_NAMES`` order),
    a line of twelve -1 for an unannotated frame. A line that mixes -1 with 0/1 is refused:
    the official score counts a frame for all twelve units or for none."""
    path = Path(path)
    header, body = _rows(path)
    _parse_header(path, header, "au")
    values = np.empty((len(body), NUM_AUS), dtype=np.int64)
    for i, line in enumerate(body):
        parts = line.split(",")
        if len(parts) != NUM_AUS:
            raise InputFormatError(
                path, i + 2, f"{line!r}: expected {NUM_AUS} values {','.join(AU_NAMES)!r}"
            )
        try:
            row = [int(x) for x in parts]
        except ValueError:
            raise InputFormatError(path, i + 2, f"{line!r}: expected integers 0 or 1") from None
        if set(row) - {0, 1} and set(row) != {AU_INVALID}:
            raise InputFormatError(
                path,
                i + 2,
                f"{line!r}: each unit must be 0 or 1, or the whole line {AU_INVALID} (unannotated)",
            )
        values[i] = row
    valid = values[:, 0] != AU_INVALID
    values = np.where(valid[:, None], values, 0).astype(np.uint8)  # 12 bytes a frame
    return FrameLabels("au", video or path.stem, path, values, valid)


READERS = {"va": read_va_labels, "expr": read_expr_labels, "au": read_au_labels}


def read_labels(task: Task, path: str | Path, video: str | None = None) -> FrameLabels:
    return READERS[task](path, video)


def shift_within_videos(
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The shifted-label control: each video's labels AND their validity mask circularly
    shifted by one random offset (a quarter to three quarters of the video), so the targets
    keep their marginals, smoothness and annotation gaps but lose any relation to the
    features. Videos not in ``videos`` are returned untouched."""
    labels, valid, _, _ = shift_training_targets(labels, valid, None, videos, seed)
    return labels, valid


Targets = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (labels, valid) per video


def shift_training_targets(
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    weights: dict[str, np.ndarray] | None,
    videos: Sequence[str],
    seed: int,
    others: dict[Task, Targets] | None = None,
) -> tuple[
    dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray] | None, dict[Task, Targets]
]:
    """``shift_within_videos`` of every target a trial trains on: labels, their mask and their
    per-frame weights (pseudo-labels' confidences) moved together, one offset a video, and a
    multi-task trial's other tasks' labels and masks (``others``) by the same offset, so no
    label the trial sees keeps its relation to the features. Returns (labels, valid, weights,
    others), shifted."""
    rng = np.random.default_rng(seed)
    labels, valid = dict(labels), dict(valid)
    weights = dict(weights) if weights is not None else None
    moved = {t: (dict(y), dict(m)) for t, (y, m) in (others or {}).items()}
    for v in videos:
        n = len(labels[v])
        offset = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4)))
        labels[v] = np.roll(labels[v], offset, axis=0)
        valid[v] = np.roll(valid[v], offset, axis=0)
        if weights is not None and v in weights:
            weights[v] = np.roll(weights[v], offset, axis=0)
        for y, m in moved.values():
            if v in y:
                y[v], m[v] = np.roll(y[v], offset, axis=0), np.roll(m[v], offset, axis=0)
    return labels, valid, weights, moved
