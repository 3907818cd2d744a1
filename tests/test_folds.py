"""K-fold cross-validation (``--folds``): whole videos and raw-video pairs in one fold, folds
balanced by frames, the fold's bank, and the out-of-fold score and fold-averaged test
predictions on hand-made predictions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from abaw_ray.metrics import score_split
from abaw_ray.smoothing import NO_SMOOTHING, choose_smoothing
from abaw_ray.train.bank import FeatureBank
from abaw_ray.tune.folds import (
    assign_folds,
    combine_folds,
    fold_bank,
    folds_problem,
    pooled_videos,
    raw_video,
)

# Five raw videos: "a" holds a _left/_right pair. Largest group first into the lightest fold:
# a (600) -> fold 0, b (500) -> fold 1, c (400) -> fold 2, d (200) -> fold 2 (400, lightest),
# e (100) -> fold 1 (500, lightest): 600 / 600 / 600 frames.
SIZES = {"a_left": 300, "a_right": 300, "b": 500, "c": 400, "d": 200, "e": 100}
EXPECTED = [("a_left", "a_right"), ("b", "e"), ("c", "d")]


def test_raw_video_groups_a_pair_only():
    assert raw_video("10-60-1280x720_left") == raw_video("10-60-1280x720_right") == "10-60-1280x720"
    assert raw_video("video5") == "video5"
    assert raw_video("left_video") == "left_video"


def test_folds_are_whole_videos_pairs_together_and_balanced_by_frames():
    folds = assign_folds(SIZES, 3, seed=0)
    assert folds == EXPECTED
    every = [v for f in folds for v in f]
    assert sorted(every) == sorted(SIZES) and len(every) == len(set(every))
    assert [sum(SIZES[v] for v in f) for f in folds] == [600, 600, 600]


def test_folds_do_not_depend_on_the_input_order():
    items = list(SIZES.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert assign_folds(dict(items), 3, seed=7) == assign_folds(SIZES, 3, seed=7)


def test_the_seed_orders_groups_of_equal_size():
    sizes = {"x": 100, "y": 100, "z": 100, "w": 100}
    drawn = {tuple(assign_folds(sizes, 2, seed=s)) for s in range(20)}
    assert len(drawn) > 1  # the seed decides which equal groups share a fold
    for folds in drawn:
        assert [len(f) for f in folds] == [2, 2]
    assert assign_folds(sizes, 2, seed=3) == assign_folds(sizes, 2, seed=3)


def test_a_custom_grouping_keeps_its_groups_together():
    person = {"p1_a": "p1", "p1_b": "p1", "p2_a": "p2", "p3_a": "p3"}
    sizes = {"p1_a": 10, "p1_b": 10, "p2_a": 15, "p3_a": 12}
    folds = assign_folds(sizes, 2, seed=0, group_of=person.__getitem__)
    assert ("p1_a", "p1_b") in folds


def test_too_many_folds_are_refused():
    with pytest.raises(ValueError, match="at most 5 folds"):
        assign_folds(SIZES, 6, seed=0)  # six videos, but five raw videos
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(SIZES, 1, seed=0)
    assert assign_folds(SIZES, 5, seed=0)  # one group per fold is fine


def _bank() -> FeatureBank:
    videos = ("a_left", "a_right", "b", "c", "d", "e", "t1")
    return FeatureBank(
        task="va",
        keys=("f",),
        modality={"f": "visual"},
        splits={
            "train": ("a_left", "a_right", "b"),
            "selection": ("c", "d"),
            "holdout": ("e",),
            "test": ("t1",),
        },
        num_frames={v: SIZES.get(v, 50) for v in videos},
        frames={},
        native={},
        positions={},
        mean={"f": np.full(3, 0.5, np.float32)},
        std={"f": np.full(3, 2.0, np.float32)},
        labels={v: np.zeros((SIZES[v], 2), np.float32) for v in SIZES},
        valid={v: np.ones(SIZES[v], bool) for v in SIZES},
        face_mask={v: np.ones(SIZES.get(v, 50), bool) for v in videos},
        dims={"f": 3},
        shards={"f": ["ref0", "ref1"]},
    )


def test_fold_bank_trains_on_the_other_folds_and_selects_on_its_own():
    bank = _bank()
    assert pooled_videos(bank) == ("a_left", "a_right", "b", "c", "d", "e")
    fb = fold_bank(bank, ("b", "e"))
    assert fb.splits == {
        "train": ("a_left", "a_right", "c", "d"),
        "selection": ("b", "e"),
        "holdout": (),
        "test": ("t1",),
    }
    # the same shards, labels and statistics (those of the official training videos)
    assert fb.mean is bank.mean and fb.std is bank.std and fb.shards is bank.shards
    assert fb.labels is bank.labels and fb.valid is bank.valid
    assert bank.splits["train"] == ("a_left", "a_right", "b")  # the bank itself is untouched
    with pytest.raises(ValueError, match="not training or validation"):
        fold_bank(bank, ("b", "t1"))
    with pytest.raises(ValueError, match="some, not all"):
        fold_bank(bank, pooled_videos(bank))


def test_the_job_refuses_folds_it_cannot_draw():
    bank = _bank()
    assert folds_problem(bank, 0, 0) is None and folds_problem(bank, 1, 0) is None
    assert folds_problem(bank, 5, 0) is None
    problem = folds_problem(bank, 6, 0)
    assert problem is not None and problem.startswith("--folds 6:") and "at most 5" in problem


def _va(values: list[float]) -> np.ndarray:
    """[T, 2] with the same column for valence and arousal."""
    x = np.asarray(values, np.float32)
    return np.stack([x, x], 1)


def test_out_of_fold_score_is_global_over_every_video():
    # Fold 1 predicts video a perfectly (CCC 1). Fold 2 predicts b one too high (CCC 1/3 on
    # its own) and c, whose frames are unannotated, wildly (masked: it must not count).
    # Together, x = [0, 1, 1, 2] against y = [0, 1, 0, 1]: var x 1/2, var y 1/4, cov 1/4,
    # (mean x - mean y)^2 = 1/4, so CCC = 2 (1/4) / (1/2 + 1/4 + 1/4) = 1/2; the mean over
    # the folds is (1 + 1/3) / 2 = 2/3.
    labels = {"a": _va([0, 1]), "b": _va([0, 1]), "c": _va([0, 0])}
    valid = {"a": np.ones(2, bool), "b": np.ones(2, bool), "c": np.zeros(2, bool)}
    val = [{"a": _va([0, 1])}, {"b": _va([1, 2]), "c": _va([9, -9])}]
    test = [{"t": _va([0.2, 0.6])}, {"t": _va([0.4, 0.0])}]
    result = combine_folds("va", [("a",), ("b", "c")], val, test, labels, valid, epochs=[3, 5])
    assert result.folds[0].scores["ccc"] == pytest.approx(1.0)
    assert result.folds[1].scores["ccc"] == pytest.approx(1 / 3)
    assert result.mean["ccc"] == pytest.approx(2 / 3)
    assert result.oof["ccc"] == pytest.approx(0.5)
    assert result.oof["ccc_valence"] == result.oof["ccc_arousal"] == pytest.approx(0.5)
    assert [f.frames for f in result.folds] == [2, 2]
    # each target's smoothing is the one choose_smoothing picks for it on the out-of-fold
    # predictions, and the submission's predictions are the folds' mean (0.3, 0.3) /
    # (0.3, 0.3) smoothed by them
    oof = {**val[0], **val[1]}
    for target in ("valence", "arousal"):
        key = f"ccc_{target}"
        chosen, score, _ = choose_smoothing("va", oof, ["a", "b", "c"], labels, valid, key=key)
        assert result.recipe.smoothing[target] == chosen
        assert result.oof_smoothed[key] == pytest.approx(score)
        column = 0 if target == "valence" else 1
        expected = chosen.apply("va", _va([0.3, 0.3]))[:, column]
        np.testing.assert_allclose(result.test["t"][:, column], expected)
    summary = result.summary()
    assert summary["fold1_ccc"] == pytest.approx(1.0) and summary["fold2_best_epoch"] == 5
    assert summary["folds_mean_ccc"] == pytest.approx(2 / 3)
    assert summary["folds_oof_ccc"] == pytest.approx(0.5)


def test_test_predictions_are_the_mean_over_the_fold_models():
    # Perfect out-of-fold predictions: no smoothing can beat them, so none is chosen and the
    # submission's predictions are exactly the folds' mean.
    labels = {"a": _va([0, 1, 0.5]), "b": _va([1, 0, -0.5])}
    valid = {v: np.ones(3, bool) for v in labels}
    t1, t2, t3 = _va([0.1, 0.2, 0.3]), _va([0.3, 0.2, 0.1]), _va([0.5, -0.4, 0.0])
    result = combine_folds(
        "va",
        [("a",), ("b",)],
        [{"a": labels["a"]}, {"b": labels["b"]}],
        [{"x": t1, "y": t3}, {"x": t2, "y": t3}],
        labels,
        valid,
    )
    assert set(result.recipe.smoothing.values()) == {NO_SMOOTHING}
    assert result.oof["ccc"] == pytest.approx(1.0)
    np.testing.assert_allclose(result.test["x"], _va([0.2, 0.2, 0.2]), atol=1e-7)
    np.testing.assert_allclose(result.test["y"], t3, atol=1e-7)


def _probs(rows: list[list[float]]) -> np.ndarray:
    p = np.zeros((len(rows), 8), np.float32)
    p[:, : len(rows[0])] = rows
    return p


def test_expression_folds_average_probabilities_and_score_macro_f1_globally():
    # Labels a = [0, 1], b = [1, 1]; decisions a = [0, 1], b = [0, 1]. Fold a: F1 1. Fold b:
    # class 0 F1 0, class 1 F1 2/3: 1/3. Together t = [0, 1, 1, 1], p = [0, 1, 0, 1]:
    # class 0 F1 2/3, class 1 F1 2*2 / (3 + 2) = 4/5: (2/3 + 4/5) / 2 = 11/15.
    labels = {"a": np.array([0, 1]), "b": np.array([1, 1])}
    valid = {"a": np.ones(2, bool), "b": np.ones(2, bool)}
    val = [
        {"a": _probs([[0.9, 0.1], [0.2, 0.8]])},
        {"b": _probs([[0.7, 0.3], [0.4, 0.6]])},
    ]
    # One test frame: fold 1 says class 0 (0.6), fold 2 class 2 (0.5); their mean probabilities
    # (0.3, 0.45, 0.25) decide class 1, which neither fold's vote would.
    test = [{"t": _probs([[0.6, 0.4, 0.0]])}, {"t": _probs([[0.0, 0.5, 0.5]])}]
    result = combine_folds("expr", [("a",), ("b",)], val, test, labels, valid)
    assert result.folds[0].scores["f1"] == pytest.approx(1.0)
    assert result.folds[1].scores["f1"] == pytest.approx(1 / 3)
    assert result.mean["f1"] == pytest.approx(2 / 3)
    assert result.oof["f1"] == pytest.approx(11 / 15)
    assert result.oof == score_split("expr", {**val[0], **val[1]}, ["a", "b"], labels, valid)
    mean = _probs([[0.3, 0.45, 0.25]])
    smoothing = result.recipe.smoothing["classes"]
    np.testing.assert_allclose(result.test["t"], smoothing.apply("expr", mean), atol=1e-7)
    assert result.test["t"].argmax(-1).tolist() == [1]


def test_a_video_in_two_folds_is_refused():
    labels = {"a": _va([0, 1])}
    valid = {"a": np.ones(2, bool)}
    with pytest.raises(ValueError, match="more than one fold"):
        combine_folds("va", [("a",), ("a",)], [{"a": labels["a"]}] * 2, [{}, {}], labels, valid)
