"""Pseudo-labels: confidences, merging with real labels, the shifted control, the file."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_ray.pseudo import PseudoLabels, make_pseudo_labels, training_targets


def test_expr_pseudo_labels_take_the_ensembles_class_and_probability():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], np.float32)
    probs = np.pad(probs, ((0, 0), (0, 5)))
    labelled = {"train": np.array([True, False, False]), "test": None}
    p = make_pseudo_labels("expr", {"train": probs, "test": probs}, [], labelled)
    np.testing.assert_array_equal(p.values["train"], [0, 2, 1])
    # a frame with a real label gets no pseudo-label (confidence 0)
    np.testing.assert_allclose(p.confidence["train"], [0.0, 0.6, 0.5])
    np.testing.assert_allclose(p.confidence["test"], [0.7, 0.6, 0.5])
    assert p.frames == 5
    assert p.mean_confidence() == pytest.approx((0.6 + 0.5 + 0.7 + 0.6 + 0.5) / 5)


def test_va_confidence_is_the_members_agreement():
    a = np.array([[0.5, 0.5], [0.0, 0.0]], np.float32)
    b = np.array([[0.5, 0.5], [0.2, -0.4]], np.float32)
    mean = (a + b) / 2
    p = make_pseudo_labels("va", {"v": mean}, [{"v": a}, {"v": b}], {"v": None})
    # frame 0: members agree -> 1; frame 1: std 0.1 and 0.2 (mean 0.15) -> 1 - 0.15 / 0.3
    np.testing.assert_allclose(p.confidence["v"], [1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(p.values["v"], mean)


def test_training_targets_keep_real_labels_and_weigh_pseudo_ones():
    labels = {"a": np.array([1, 2, -1, -1]), "val": np.array([0, 0])}
    valid = {"a": np.array([True, True, False, False]), "val": np.array([True, True])}
    pseudo = PseudoLabels(
        "expr",
        {"a": np.array([5, 5, 6, 7]), "t": np.array([3, 4])},
        {"a": np.array([0.0, 0.0, 0.9, 0.0], np.float32), "t": np.array([0.8, 0.4], np.float32)},
    )
    videos, lab, ok, w = training_targets(labels, valid, pseudo, ["a"])
    assert videos == ("a", "t")  # the test video joins the training videos; "val" never does
    np.testing.assert_array_equal(lab["a"], [1, 2, 6, 7])
    np.testing.assert_array_equal(ok["a"], [True, True, True, False])  # confidence 0: unused
    np.testing.assert_allclose(w["a"], [1.0, 1.0, 0.9, 0.0])
    np.testing.assert_array_equal(lab["t"], [3, 4])
    np.testing.assert_allclose(w["t"], [0.8, 0.4])
    assert lab["val"] is labels["val"] and ok["val"] is valid["val"]


def test_the_control_moves_pseudo_labels_with_their_confidence_off_their_frames(tmp_path):
    n = 40
    values = {"t": np.arange(n) % 8, "a": np.arange(n) % 8}
    conf_a = np.zeros(n, np.float32)
    conf_a[10:30] = np.linspace(0.3, 0.9, 20)  # a training video's unlabelled stretch
    conf = {"t": np.linspace(0.1, 1.0, n).astype(np.float32), "a": conf_a}
    p = PseudoLabels("expr", values, conf, "search-1")
    s = p.shifted(seed=0)
    for v in ("t", "a"):
        carried = conf[v] > 0
        # the same frames carry a pseudo-label, with the same weights ...
        np.testing.assert_array_equal(s.confidence[v] > 0, carried)
        assert sorted(s.confidence[v][carried]) == sorted(conf[v][carried])
        # ... each pseudo-label still with its own confidence, but on another frame
        pairs = {(int(x), float(c)) for x, c in zip(values[v][carried], conf[v][carried])}
        moved = {(int(x), float(c)) for x, c in zip(s.values[v][carried], s.confidence[v][carried])}
        assert pairs == moved
        assert not np.array_equal(s.values[v][carried], values[v][carried])
    path = p.save(tmp_path / "pseudo_labels.npz")
    back = PseudoLabels.load(tmp_path)
    assert back.task == "expr" and back.source == "search-1"
    for v in values:
        np.testing.assert_array_equal(back.values[v], values[v])
        np.testing.assert_array_equal(back.confidence[v], conf[v])
    assert [x.name for x in tmp_path.iterdir()] == [path.name]  # nothing half-written left
    with pytest.raises(FileNotFoundError, match="pseudo_labels.npz"):
        PseudoLabels.load(tmp_path / "elsewhere")


def test_videos_a_trial_is_scored_on_never_train_on_pseudo_labels():
    labels = {"a": np.array([1, -1]), "b": np.array([2, -1])}
    valid = {v: np.array([True, False]) for v in labels}
    conf = {v: np.array([0.0, 0.9], np.float32) for v in ("a", "b", "t")}
    pseudo = PseudoLabels("expr", {v: np.array([3, 3]) for v in conf}, conf)
    # "b" is a fold's validation video: its pseudo-labelled frames must not be trained on
    videos, *_ = training_targets(labels, valid, pseudo, ["a"], exclude=["b"])
    assert videos == ("a", "t")
