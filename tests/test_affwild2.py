"""The Aff-Wild2 vocabulary: its rules, that it stays light, and that the embedded corpus is
written in exactly the names it gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from abaw_ray.affwild2 import (
    ANNOTATIONS,
    CHALLENGE_DIRS,
    FACE_DIR,
    FACE_SIZE,
    LABEL_HEADERS,
    SPLIT_DIRS,
    SPLIT_OF_DIR,
    TEMPLATE_HEADERS,
    TEMPLATES,
    TEST_LISTS,
    face_image_name,
    image_location,
    pair_names,
    raw_video,
)
from abaw_ray.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]


def test_a_pair_is_one_raw_video_and_frames_are_named_from_one():
    assert {raw_video(v) for v in pair_names("10-60-1280x720")} == {"10-60-1280x720"}
    assert raw_video("left_video") == "left_video"
    assert face_image_name(1) == "00001.jpg" and face_image_name(7, width=3) == "007.jpg"
    assert image_location("video3", 12) == "video3/00012.jpg"
    assert all(SPLIT_OF_DIR[folder.lower()] == split for split, folder in SPLIT_DIRS.items())


def test_the_vocabulary_imports_nothing_heavy_and_no_stage():
    """metrics, losses and models import ``tasks``; ``affwild2`` sits on it alone (no cycle,
    no numpy, no data or features stage)."""
    code = (
        "import sys, abaw_ray.affwild2\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch')\n"
        "       or m.startswith(('abaw_ray.data', 'abaw_ray.features'))]\n"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_embedded_corpus_is_written_in_these_names(synthetic):
    root = synthetic.root
    for task in TASKS:
        for folder in SPLIT_DIRS.values():
            files = sorted((root / ANNOTATIONS / CHALLENGE_DIRS[task][0] / folder).glob("*.txt"))
            assert files and all(
                f.read_text().splitlines()[0] == ",".join(LABEL_HEADERS[task]) for f in files
            )
        assert (root / TEST_LISTS[task]).is_file()
        assert (root / TEMPLATES[task]).read_text().splitlines()[0] == TEMPLATE_HEADERS[task]
    video = next(v for v in synthetic.videos if v.split == "train")
    faces = sorted((root / FACE_DIR / video.name).iterdir())
    assert all(len(f.name) == len(face_image_name(1)) for f in faces)
    with Image.open(faces[0]) as im:
        assert im.size == (FACE_SIZE, FACE_SIZE)
