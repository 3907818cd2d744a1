"""ABAW submission files: written by following the official template, and validated.

Every template line is filled, in template order. A frame without a face takes the prediction
of the nearest frame that has one. VA values are clipped to [-1, 1]; EXPR lines hold a class,
AU lines twelve 0/1 decisions.

CLI: ``python -m abaw_ray.submission validate --task va|expr|au --template T FILE``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from abaw_ray.affwild2 import TEMPLATE_HEADERS, image_location
from abaw_ray.data.corpus import Corpus, SubmissionTemplate, load_corpus, read_template
from abaw_ray.data.timeline import nearest_available
from abaw_ray.errors import InputFormatError
from abaw_ray.fsutil import atomic_write_text
from abaw_ray.metrics import au_f1, macro_f1, va_scores
from abaw_ray.tasks import AU_DECISION, KIND, NUM_AUS, NUM_EXPR_CLASSES, TASKS, Task


def decisions(task: Task, pred: np.ndarray) -> np.ndarray:
    """What a submission line holds, from a recipe's predictions: VA values as they are, the
    EXPR class of the highest probability, each AU present at ``AU_DECISION`` and above."""
    if KIND[task] == "multiclass":
        return np.asarray(pred).argmax(-1)
    if KIND[task] == "multilabel":
        return (np.asarray(pred) >= AU_DECISION).astype(np.int64)
    return np.asarray(pred)


def _video_rows(
    task: Task, video: str, frames: np.ndarray, pred: np.ndarray, face_mask: np.ndarray | None
) -> np.ndarray:
    pred = np.asarray(pred)
    if task == "va" and (pred.ndim != 2 or pred.shape[1] != 2):
        raise ValueError(f"VA predictions for {video} must be [T, 2], got {pred.shape}")
    if task == "expr" and pred.ndim != 1:
        raise ValueError(f"EXPR predictions for {video} must be [T] classes, got {pred.shape}")
    if task == "au" and (pred.ndim != 2 or pred.shape[1] != NUM_AUS):
        raise ValueError(f"AU predictions for {video} must be [T, {NUM_AUS}] 0/1, got {pred.shape}")
    available = np.ones(len(pred), dtype=bool)
    if face_mask is not None:
        fm = np.asarray(face_mask, dtype=bool)[: len(pred)]
        available[: len(fm)] &= fm
        available[len(fm) :] = False
        if not available.any():  # no face anywhere: every frame's own prediction is all we have
            available[:] = True
    if not available.any():
        raise ValueError(f"no predictions for video {video}")
    need = frames - 1
    direct = (need < len(pred)) & available[np.minimum(need, len(pred) - 1)]
    src = np.where(direct, need, nearest_available(need, available))
    return pred[src]


def format_submission(
    template: SubmissionTemplate,
    predictions: Mapping[str, np.ndarray],
    face_masks: Mapping[str, np.ndarray] | None = None,
) -> str:
    """The submission text for ``template``; ``predictions[video]`` is indexed by frame - 1."""
    task = template.task
    missing = [v for v in template.videos if v not in predictions]
    if missing:
        raise ValueError(f"no predictions for {len(missing)} template videos: {missing[:5]}")
    rows_out: list[str] = [TEMPLATE_HEADERS[task]]
    per_line: list[str] = [""] * len(template)
    for video, lines in template.lines_by_video.items():
        rows = _video_rows(
            task,
            video,
            template.frame_of_line[lines],
            predictions[video],
            None if face_masks is None else face_masks.get(video),
        )
        if task == "va":
            rows = np.clip(np.nan_to_num(rows.astype(np.float64), nan=0.0), -1.0, 1.0)
            text = [f"{a:.6f},{b:.6f}" for a, b in rows]
        elif task == "au":
            if rows.size and not np.isin(rows, (0, 1)).all():
                raise ValueError(f"AU predictions for {video} must be 0/1 decisions")
            text = [",".join(str(int(x)) for x in row) for row in rows]
        else:
            text = [str(int(c)) for c in rows]
        for line, value in zip(lines, text):
            per_line[line] = value
    rows_out += [f"{loc},{val}" for loc, val in zip(template.image_locations, per_line)]
    return "\n".join(rows_out) + "\n"


def write_submission(
    path: str | Path,
    template: SubmissionTemplate,
    predictions: Mapping[str, np.ndarray],
    face_masks: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write atomically, then validate what was written against the template."""
    path = Path(path)
    atomic_write_text(path, format_submission(template, predictions, face_masks))
    validate_submission(path, template)
    return path


def template_for_videos(
    task: Task, num_frames: Mapping[str, int], path: str | Path = "<generated>"
) -> SubmissionTemplate:
    """A template listing every frame of the given videos, e.g. to score a validation split
    through exactly the code path that writes the test submission."""
    locations, videos, frames = [], [], []
    for video, n in num_frames.items():
        for k in range(1, n + 1):
            locations.append(image_location(video, k))
            videos.append(video)
            frames.append(k)
    return SubmissionTemplate(
        task,
        Path(path),
        TEMPLATE_HEADERS[task],
        tuple(locations),
        tuple(videos),
        np.array(frames, dtype=np.int64),
    )


def score_submission(
    path: str | Path, template: SubmissionTemplate, corpus: Corpus
) -> dict[str, float]:
    """Official scores of a submission file against the corpus labels of its videos."""
    parsed = read_submission(path, template)
    preds, targets, valid = [], [], []
    for video, (frames, values) in parsed.items():
        lab = corpus.labels_on_timeline(template.task, video)
        inside = frames <= lab.num_frames
        idx = frames[inside] - 1
        preds.append(values[inside])
        targets.append(lab.values[idx])
        valid.append(lab.valid[idx])
    p, t, m = np.concatenate(preds), np.concatenate(targets), np.concatenate(valid)
    if template.task == "va":
        return va_scores(p, t, m)
    if template.task == "au":
        return {"mean_f1": float(au_f1(p[m], t[m]).mean())}
    return {"macro_f1": macro_f1(p, t, NUM_EXPR_CLASSES, m)}


def _parse_value(task: Task, path: Path, lineno: int, fields: list[str]) -> tuple:
    if task == "va":
        if len(fields) != 2:
            raise InputFormatError(
                path, lineno, f"expected 2 values (valence, arousal), got {len(fields)}"
            )
        try:
            v, a = float(fields[0]), float(fields[1])
        except ValueError:
            raise InputFormatError(path, lineno, f"non-numeric value in {fields}") from None
        for x in (v, a):
            if not math.isfinite(x):
                raise InputFormatError(path, lineno, f"value {x} is not finite")
            if not -1.0 <= x <= 1.0:
                raise InputFormatError(path, lineno, f"value {x} is outside [-1, 1]")
        return (v, a)
    if task == "au":
        if len(fields) != NUM_AUS:
            raise InputFormatError(
                path, lineno, f"expected {NUM_AUS} action units (0 or 1), got {len(fields)}"
            )
        bad = [f for f in fields if f not in ("0", "1")]
        if bad:
            raise InputFormatError(path, lineno, f"action unit value {bad[0]!r} is not 0 or 1")
        return tuple(int(f) for f in fields)
    if len(fields) != 1:
        raise InputFormatError(path, lineno, f"expected one class, got {len(fields)} values")
    try:
        c = int(fields[0])
    except ValueError:
        raise InputFormatError(path, lineno, f"class {fields[0]!r} is not an integer") from None
    if not 0 <= c < NUM_EXPR_CLASSES:
        raise InputFormatError(path, lineno, f"class {c} is outside 0..{NUM_EXPR_CLASSES - 1}")
    return (c,)


def read_submission(
    path: str | Path, template: SubmissionTemplate
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validate and parse: ``{video: (frames, values)}`` in template order."""
    path = Path(path)
    task = template.task
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip().replace(" ", "") != TEMPLATE_HEADERS[task]:
        got = lines[0] if lines else ""
        raise InputFormatError(path, 1, f"header {got!r}; expected {TEMPLATE_HEADERS[task]!r}")
    body = lines[1:]
    values: list[tuple] = []
    for i, expected in enumerate(template.image_locations):
        lineno = i + 2
        if i >= len(body):
            raise InputFormatError(
                path,
                lineno,
                f"missing line: expected {expected!r} ({len(template) - i} lines missing)",
            )
        fields = [f.strip() for f in body[i].split(",")]
        if fields[0] != expected:
            where = (
                "extra or reordered line"
                if fields[0] in set(template.image_locations)
                else "unknown image location"
            )
            raise InputFormatError(path, lineno, f"{where} {fields[0]!r}; expected {expected!r}")
        values.append(_parse_value(task, path, lineno, fields[1:]))
    if len(body) > len(template):
        raise InputFormatError(
            path, len(template) + 2, f"extra line {body[len(template)]!r} past the template's end"
        )
    arr = np.array(values, dtype=np.float64 if task == "va" else np.int64)
    if task == "expr":
        arr = arr[:, 0]
    return {
        video: (template.frame_of_line[lines], arr[lines])
        for video, lines in template.lines_by_video.items()
    }


def validate_submission(path: str | Path, template: SubmissionTemplate) -> int:
    """Raise :class:`InputFormatError` at the first bad line; return the number of lines."""
    read_submission(path, template)
    return len(template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m abaw_ray.submission")
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check a submission file against its template")
    val.add_argument("--task", choices=TASKS, required=True, help="VA, EXPR or AU")
    where = val.add_mutually_exclusive_group()
    where.add_argument(
        "--data",
        type=Path,
        help="Aff-Wild2 root whose test template to check against (default: the embedded corpus)",
    )
    where.add_argument("--template", type=Path, help="the template file itself")
    val.add_argument("file", type=Path, help="the submission file")
    args = parser.parse_args(argv)
    try:
        if args.template is not None:
            template = read_template(args.template, task=args.task)
        else:
            from abaw_ray.data.synthetic import ensure_default_corpus

            corpus = load_corpus(args.data or ensure_default_corpus())
            if args.task not in corpus.templates:
                print(
                    f"invalid: {corpus.root} has no {args.task.upper()} template", file=sys.stderr
                )
                return 1
            template = corpus.templates[args.task]
        n = validate_submission(args.file, template)
    except (InputFormatError, FileNotFoundError) as err:
        print(f"invalid: {err}", file=sys.stderr)
        return 1
    print(f"valid: {args.file} has all {n} lines of {template.path} in order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
