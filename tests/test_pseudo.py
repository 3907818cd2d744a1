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


def _members(task: str, videos: dict[str, int], n: int, seed: int):
    """``n`` trials' predictions of every video (labelled ones as ``val``), noisy copies of a
    shared signal, each with its own quality."""
    from abaw_ray.ensemble import Member

    rng = np.random.default_rng(seed)
    width = 2 if task == "va" else 8
    base = {v: rng.normal(size=(t, width)).astype(np.float32) for v, t in videos.items()}
    members = []
    for i in range(n):
        noisy = {v: b + rng.normal(scale=1.0 + 0.1 * i, size=b.shape) for v, b in base.items()}
        if task == "va":
            noisy = {v: np.tanh(x).astype(np.float32) for v, x in noisy.items()}
        else:
            noisy = {v: np.exp(x) / np.exp(x).sum(-1, keepdims=True) for v, x in noisy.items()}
        val = {v: x for v, x in noisy.items() if v.startswith(("s", "h"))}
        test = {v: x for v, x in noisy.items() if v.startswith("t")}
        unlabelled = {v: x for v, x in noisy.items() if v.startswith("u")}
        members.append(Member(f"m{i}", val, test, f"trial {i}", unlabelled))
    return base, members


@pytest.mark.parametrize("task", ["va", "expr"])
def test_pseudo_labels_do_not_depend_on_the_held_out_labels(task):
    """Pseudo-labels are made with the recipe fitted on the selection videos alone: changing
    only the held-out videos' labels changes nothing of them (the submitted recipe is refit
    on the held-out videos too, and used to leak them into a later search)."""
    from abaw_ray.ensemble import build_ensemble, ensemble_pseudo_labels

    frames = {"s1": 300, "s2": 300, "h1": 300, "h2": 300, "u1": 200, "t1": 200}
    base, members = _members(task, frames, 4, seed=1)
    labelled = [v for v in frames if v[0] in "sh"]
    if task == "va":
        labels = {v: np.tanh(base[v]) for v in labelled}
    else:
        labels = {v: base[v].argmax(-1) for v in labelled}
    valid = {v: np.ones(frames[v], bool) for v in labelled}
    valid["u1"] = np.arange(200) < 50  # a training video, labelled on its first 50 frames
    selection, held = ["s1", "s2"], ["h1", "h2"]

    def pseudo(labels):
        ens = build_ensemble(task, members, selection, held, ["t1"], labels, valid)
        return ens, ensemble_pseudo_labels(task, members, ens, valid, "search-1")

    ens, first = pseudo(labels)
    flipped = dict(labels)
    for v in held:  # the held-out labels replaced by the worst member's own predictions
        own = members[-1].validation[v]
        flipped[v] = own if task == "va" else own.argmax(-1)
    ens2, second = pseudo(flipped)
    assert ens.submitted.recipe != ens2.submitted.recipe  # what would have leaked
    for v in ("u1", "t1"):
        np.testing.assert_array_equal(first.values[v], second.values[v])
        np.testing.assert_array_equal(first.confidence[v], second.confidence[v])
    assert first.selection_videos == ("s1", "s2") and first.holdout_videos == ("h1", "h2")
    assert not (first.confidence["u1"][:50] > 0).any() and (first.confidence["u1"][50:] > 0).any()


def test_expr_pseudo_confidence_stays_a_probability_under_the_mode_filter():
    """With the mode filter chosen, the class is the filtered one but its confidence is the
    ensemble's probability of that class (one-hot rows would make every frame 1.0)."""
    from abaw_ray.ensemble import Recipe, ensemble_pseudo_labels
    from abaw_ray.smoothing import Smoothing

    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.52, 0.48], [0.9, 0.1]], np.float32)
    probs = np.pad(probs, ((0, 0), (0, 6)))
    from abaw_ray.ensemble import EnsembleResult, Fit, Member

    member = Member("m0", {}, {"t": probs}, "", {})
    recipe = Recipe({"classes": {"m0": 1.0}}, {"classes": Smoothing("mode", 3)})
    fit = Fit(recipe, ("s",), {"f1": 0.5}, ("m0", {"f1": 0.5}))
    ens = EnsembleResult(fit, {}, fit, {}, {})
    p = ensemble_pseudo_labels("expr", [member], ens, {"t": None}, "x")
    # mode of [0, 1, 0, 0, 0] over 3 frames: 0 everywhere; confidence P(class 0) per frame
    np.testing.assert_array_equal(p.values["t"], [0, 0, 0, 0, 0])
    np.testing.assert_allclose(p.confidence["t"], [0.6, 0.3, 0.55, 0.52, 0.9], atol=1e-6)


def test_the_file_keeps_the_videos_its_search_selected_on_and_held_out(tmp_path):
    p = PseudoLabels(
        "va",
        {"t": np.zeros((3, 2), np.float32)},
        {"t": np.ones(3, np.float32)},
        "search-1",
        selection_videos=("s1", "s2"),
        holdout_videos=("h1",),
    )
    back = PseudoLabels.load(p.save(tmp_path / "pseudo_labels.npz"))
    assert back.selection_videos == ("s1", "s2") and back.holdout_videos == ("h1",)
