"""The task vocabulary, on the ground floor: the three ABAW frame-level tasks, what each one's
labels are, and the score each task is selected on. Metrics, losses and models read it without
the data layer; ``abaw_ray.affwild2`` spells the corpus files' headers from it. It imports
nothing of the project."""

from __future__ import annotations

import typing
from typing import Literal

Task = Literal["va", "expr", "au"]
TASKS: tuple[Task, ...] = typing.get_args(Task)

VA_COLUMNS = ("valence", "arousal")
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
NUM_EXPR_CLASSES = len(EXPR_CLASSES)
# The 12 action units of the ABAW AU challenge, in its files' column order.
AU_NAMES = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)
NUM_AUS = len(AU_NAMES)

# What a task's per-frame labels are: values in [-1, 1] per column (VA), one class of several
# (EXPR), or a 0/1 per column (AU). Whatever differs between tasks follows from this.
Kind = Literal["regression", "multiclass", "multilabel"]
KIND: dict[Task, Kind] = {"va": "regression", "expr": "multiclass", "au": "multilabel"}
# A task's label columns: VA's targets, EXPR's classes, AU's units.
COLUMNS: dict[Task, tuple[str, ...]] = {"va": VA_COLUMNS, "expr": EXPR_CLASSES, "au": AU_NAMES}
# A model's outputs per frame: VA values, EXPR class logits, AU logits.
OUTPUT_DIMS: dict[Task, int] = {t: len(c) for t, c in COLUMNS.items()}
AU_DECISION = 0.5  # an AU is present where its (threshold-calibrated) probability reaches this

# The official score of each task (metrics.score_split's key) and the name a trial reports it
# under for the validation videos it selects on.
OFFICIAL_SCORE: dict[Task, str] = {"va": "ccc", "expr": "f1", "au": "f1"}
PRIMARY_METRIC: dict[Task, str] = {t: f"val_{s}" for t, s in OFFICIAL_SCORE.items()}

# What a trial reports besides its scores: 1 on its last epoch (its epochs or patience spent;
# a search's Tune stops it there, so a trial never ends with a result in flight), and the last
# lines of an error its training code raised (the trial ends there, not retried).
TRIAL_FINISHED = "trial_finished"
TRIAL_ERROR = "trial_error"


def label_shape(task: Task, frames: int) -> tuple[int, ...]:
    """The shape of ``frames`` frames' labels: [T, 2] VA values, [T] EXPR classes, [T, 12] AUs."""
    return (frames,) if KIND[task] == "multiclass" else (frames, OUTPUT_DIMS[task])


def label_dtype(task: Task) -> str:
    """A task's labels' numpy dtype: VA float32 values, EXPR int64 classes, AU float32 0/1
    (what BCE reads)."""
    return "int64" if KIND[task] == "multiclass" else "float32"
