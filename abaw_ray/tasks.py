"""The task vocabulary, on the ground floor: the two ABAW tasks, the expression classes and the
score each task is selected on. Metrics, losses and models read it without the data layer;
``abaw_ray.affwild2`` spells the corpus files' headers from it. It imports nothing."""

from __future__ import annotations

import typing
from typing import Literal

Task = Literal["va", "expr"]
TASKS: tuple[Task, ...] = typing.get_args(Task)

VA_COLUMNS = ("valence", "arousal")
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
NUM_EXPR_CLASSES = len(EXPR_CLASSES)

# The official score of each task (metrics.score_split's key) and the name a trial reports it
# under for the validation videos it selects on.
OFFICIAL_SCORE: dict[Task, str] = {"va": "ccc", "expr": "f1"}
PRIMARY_METRIC: dict[Task, str] = {t: f"val_{s}" for t, s in OFFICIAL_SCORE.items()}

# What a trial reports besides its scores: 1 on its last epoch (its epochs or patience spent;
# a search's Tune stops it there, so a trial never ends with a result in flight), and the last
# lines of an error its training code raised (the trial ends there, not retried).
TRIAL_FINISHED = "trial_finished"
TRIAL_ERROR = "trial_error"
