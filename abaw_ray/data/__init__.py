"""The data stage: the Aff-Wild2 corpus on disk as typed, validated objects, and its check."""

from abaw_ray.data.corpus import (
    SPLITS,
    Corpus,
    Split,
    SubmissionTemplate,
    Video,
    load_corpus,
    read_template,
)
from abaw_ray.data.labels import (
    EXPR_CLASSES,
    NUM_EXPR_CLASSES,
    TASKS,
    FrameLabels,
    Task,
    read_expr_labels,
    read_va_labels,
)

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
