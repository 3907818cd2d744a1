"""The Aff-Wild2 vocabulary: every name, header and marker of the corpus as ABAW distributes it.

Owns the annotation folders (``<N>th ABAW Annotations/<challenge>/<split>/<video>.txt``), the
split folders, the cropped-faces folder, its frame names and the faces' size, the raw-video
folders and the ``_left``/``_right`` pair rule, the test lists and templates with their header,
and the label files' headers and invalid-label markers. The corpus reader, the embedded
generator, the submission writer and the extraction pipeline spell them from here.

Data and one-line rules, no I/O. It imports only ``abaw_ray.tasks``, the ground floor, which
keeps the class names and VA columns themselves (metrics, losses and models read them without
this module); here they become the files' headers.
"""

from __future__ import annotations

import re
from typing import Literal

from abaw_ray.tasks import AU_NAMES, EXPR_CLASSES, TASKS, VA_COLUMNS, Task

# --- annotations: <N>th ABAW Annotations/<challenge>/<split folder>/<video>.txt -------------
ANNOTATIONS = "6th ABAW Annotations"  # the annotations root as ABAW 6 ships it
ANNOTATIONS_PATTERN = re.compile(r"abaw.*annotations|^annotations$", re.IGNORECASE)  # any edition
VA_CHALLENGE = "VA_Estimation_Challenge"  # valence/arousal label files
EXPR_CHALLENGE = "EXPR_Recognition_Challenge"  # expression label files
AU_CHALLENGE = "AU_Detection_Challenge"  # action-unit label files
# Each task's challenge folder first, then the names earlier editions gave it (read as well).
CHALLENGE_DIRS: dict[Task, tuple[str, ...]] = {
    "va": (VA_CHALLENGE, "VA_Set"),
    "expr": (EXPR_CHALLENGE, "EXPR_Classification_Challenge", "EXPR_Set"),
    "au": (AU_CHALLENGE, "AU_Set"),
}

# --- splits: a challenge folder's split folders; the test set is listed apart ---------------
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
TRAIN_DIR = "Train_Set"  # the training videos' label files
VAL_DIR = "Validation_Set"  # the validation videos' label files
SPLIT_DIRS: dict[Split, str] = {"train": TRAIN_DIR, "val": VAL_DIR}
# A split folder's name, lower-cased, as the reader accepts it (an older one: Training_Set).
SPLIT_OF_DIR: dict[str, Split] = {
    TRAIN_DIR.lower(): "train",
    "training_set": "train",
    VAL_DIR.lower(): "val",
}

# --- label files: a header line, then line k is frame k --------------------------------------
LABEL_HEADERS: dict[Task, tuple[str, ...]] = {
    "va": VA_COLUMNS,
    "expr": EXPR_CLASSES,
    "au": AU_NAMES,
}
VA_INVALID = -5.0  # a VA line "-5,-5": the frame is not annotated
EXPR_INVALID = -1  # an EXPR line "-1": the frame is not annotated
AU_INVALID = -1  # an AU line of twelve -1: the frame is not annotated
INVALID_LABEL: dict[Task, float] = {"va": VA_INVALID, "expr": EXPR_INVALID, "au": AU_INVALID}

# --- cropped faces: cropped_aligned*/<video>/<frame>.jpg ------------------------------------
FACE_DIR = "cropped_aligned"  # the cropped, aligned faces (also cropped_aligned_new_50_vids ...)
FACE_DIR_PATTERN = re.compile(rf"^{FACE_DIR}", re.IGNORECASE)
FACE_SIZE = 112  # side of a cropped face, in pixels
FRAME_NAME_WIDTH = 5  # frame k's face is 00001.jpg ...: k zero-padded to this width, from 1
FRAME_NAME = re.compile(r"^(\d+)\.jpg$", re.IGNORECASE)


def face_image_name(frame: int, width: int = FRAME_NAME_WIDTH) -> str:
    """Frame ``frame``'s face image (1-based): ``00001.jpg`` for frame 1."""
    return f"{int(frame):0{int(width)}d}.jpg"


def image_location(video: str, frame: int) -> str:
    """A template line's first column: ``<video>/<frame>.jpg``."""
    return f"{video}/{face_image_name(frame)}"


# --- raw videos: anywhere below the root; a _left/_right pair shares one --------------------
RAW_VIDEO_DIRS = ("batch1", "batch2", "new_vids")  # the folders ABAW ships the raw videos in
PAIR_SIDES = ("left", "right")  # two people of one raw video <base>: <base>_left, <base>_right
PAIR_SUFFIX = re.compile(rf"_({'|'.join(PAIR_SIDES)})$")


def pair_names(base: str) -> tuple[str, ...]:
    """The videos of the two people in raw video ``base``: ``<base>_left``, ``<base>_right``."""
    return tuple(f"{base}_{side}" for side in PAIR_SIDES)


def raw_video(video: str) -> str:
    """The raw video a video was cropped from: ``X_left`` and ``X_right`` -> ``X``, any other
    name itself. A pair shares its raw file and audio, so a pair is one unit wherever videos
    are split (held-out draw, folds)."""
    return PAIR_SUFFIX.sub("", video)


# --- the test set: a list of videos and a template of lines to fill, per task ---------------
TEST_LISTS: dict[Task, str] = {  # one video name per line
    "va": "test_set/Valence_Arousal_Estimation_Challenge_test_set_release.txt",
    "expr": "test_set/Expression_Recognition_Challenge_test_set_release.txt",
    "au": "test_set/Action_Unit_Detection_Challenge_test_set_release.txt",
}
TEMPLATE_DIR = "prediction_files_format"
TEMPLATES: dict[Task, str] = {  # a header, then one '<video>/<frame>.jpg,...' line per frame
    "va": f"{TEMPLATE_DIR}/CVPR_6th_ABAW_VA_test_set_sample.txt",
    "expr": f"{TEMPLATE_DIR}/CVPR_6th_ABAW_Expr_test_set_sample.txt",
    "au": f"{TEMPLATE_DIR}/CVPR_6th_ABAW_AU_test_set_sample.txt",
}
TEMPLATE_FIRST_COLUMN = "image_location"
# A template's and a submission's header: image_location,valence,arousal /
# image_location,Neutral,... / image_location,AU1,...,AU26
TEMPLATE_HEADERS: dict[Task, str] = {
    t: ",".join((TEMPLATE_FIRST_COLUMN, *LABEL_HEADERS[t])) for t in TASKS
}
