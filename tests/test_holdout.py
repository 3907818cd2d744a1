"""The held-out validation videos: a seeded draw of whole raw videos (a ``_left``/``_right`` pair,
two people cropped from one raw video with one audio track, is never split across selection and
held-out), the held-out videos hold no class that the selection videos lack, and a search
trained on pseudo-labels holds out what their search held out."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from abaw_ray.affwild2 import raw_video
from abaw_ray.train.bank import label_classes, split_holdout

VIDEOS = ["10-60-1280x720_left", "10-60-1280x720_right", "21-24-1920x1080", "5-25-640x360"]
VIDEOS += ["video7", "118-30-640x480"]


def test_a_pair_is_one_raw_video():
    assert raw_video("10-60-1280x720_left") == raw_video("10-60-1280x720_right") == "10-60-1280x720"
    assert raw_video("video7") == "video7"


@pytest.mark.parametrize("seed", range(20))
def test_a_pair_never_straddles_the_hold_out(seed):
    selection, held = split_holdout(VIDEOS, 1 / 3, seed)
    assert sorted([*selection, *held]) == sorted(VIDEOS) and not set(selection) & set(held)
    pair = {"10-60-1280x720_left", "10-60-1280x720_right"}
    assert pair <= set(held) or pair <= set(selection), (seed, held)
    # a third of 6 videos: 2, whether that is the pair or two single videos
    assert len(held) == 2


def test_the_draw_holds_out_the_pair_for_some_seeds_and_single_videos_for_others():
    draws = [set(split_holdout(VIDEOS, 1 / 3, seed)[1]) for seed in range(20)]
    assert any("10-60-1280x720_left" in d for d in draws)
    assert any("10-60-1280x720_left" not in d for d in draws)


def test_a_count_and_zero_and_too_many():
    assert split_holdout(VIDEOS, 0, 0) == (tuple(sorted(VIDEOS)), ())
    selection, held = split_holdout(VIDEOS, 1, 3)
    assert len(held) in (1, 2)  # one video, or the pair it belongs to
    with pytest.raises(ValueError, match="no validation video to select on"):
        split_holdout(["a_left", "a_right"], 1, 0)


def _labels(values, valid):
    return SimpleNamespace(values=np.asarray(values), valid=np.asarray(valid, bool))


def test_label_classes_count_only_valid_frames():
    corpus = SimpleNamespace(
        labels={
            "expr": {"a": _labels([0, 3, 3, 5], [1, 1, 1, 0])},
            "au": {"a": _labels([[1, 0, 0], [0, 0, 1], [0, 1, 0]], [1, 1, 0])},
        }
    )
    assert label_classes(corpus, "expr", ["a"]) == {"a": frozenset({0, 3})}
    assert label_classes(corpus, "au", ["a"]) == {"a": frozenset({0, 2})}
    assert label_classes(corpus, "va", ["a"]) == {}


# 6 raw videos; only "fear" holds class 3, so holding it out scores a class nothing selected on
CLASSES = {v: frozenset({0, 4}) for v in ["b", "c", "d", "e", "f"]} | {"fear": frozenset({0, 3})}


def test_the_held_out_classes_are_all_in_the_selection_videos():
    plain = [split_holdout(sorted(CLASSES), 1 / 3, seed)[1] for seed in range(30)]
    assert sum("fear" in held for held in plain) >= 3  # the plain draw does hold it out
    for seed in range(30):
        selection, held = split_holdout(sorted(CLASSES), 1 / 3, seed, CLASSES)
        assert "fear" not in held and len(held) == 2
        assert sorted([*selection, *held]) == sorted(CLASSES)
        if "fear" not in plain[seed]:  # a draw that qualifies is kept: same seed, same split
            assert held == plain[seed]


def test_a_class_held_by_one_video_only_leaves_the_first_draw_and_warns():
    own = {v: frozenset({i}) for i, v in enumerate(["a", "b", "c"])}  # every video its own class
    with pytest.warns(UserWarning, match="hold classes"):
        assert split_holdout(list(own), 1, 5, own) == split_holdout(list(own), 1, 5)
