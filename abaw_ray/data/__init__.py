"""The data stage: the Aff-Wild2 corpus on disk as typed, validated objects, and its check."""

from abaw_ray.affwild2 import SPLITS, Split
from abaw_ray.data.corpus import (
    Corpus,
    SubmissionTemplate,
    Video,
    load_corpus,
    read_template,
)
from abaw_ray.data.labels import FrameLabels, read_expr_labels, read_va_labels
from abaw_ray.tasks import EXPR_CLASSES, NUM_EXPR_CLASSES, TASKS, Task

__all__ = [
    "EXPR_CLASSES",
    "NUM_EXPR_CLASSES",
    "SPLITS",
    "TASKS",
    "Corpus",
    "FrameLabels",
    "Split",
    "SubmissionTemplate",
    "Task",
    "Video",
    "load_corpus",
    "read_expr_labels",
    "read_template",
    "read_va_labels",
]
