"""Greedy ensemble selection, smoothing and the split-half estimate on known predictions."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_ray.ensemble import Member, build_ensemble, score_predictions, smooth
from abaw_ray.metrics import ccc


def _va_problem(seed=0, videos=6, n=300):
    rng = np.random.default_rng(seed)
    labels, valid = {}, {}
    for i in range(videos):
        t = np.linspace(0, 6, n)
        labels[f"v{i}"] = np.stack([np.sin(t + i), np.cos(0.7 * t + i)], 1) * 0.8
        valid[f"v{i}"] = rng.random(n) > 0.05
    return labels, valid


def test_smooth_is_a_centred_moving_average():
    x = np.array([0.0, 0.0, 3.0, 0.0, 0.0])
    np.testing.assert_allclose(smooth(x, 3), [0, 1, 1, 1, 0])
    np.testing.assert_allclose(smooth(x, 1), x)
    np.testing.assert_allclose(smooth(np.ones((7, 2)), 5), np.ones((7, 2)))


def test_ensemble_beats_the_best_single_trial_and_reports_split_half():
    labels, valid = _va_problem()
    rng = np.random.default_rng(1)
    videos = sorted(labels)
    members = []
    # Three noisy members: good valence / good arousal / both mediocre; noise is independent,
    # so averaging and smoothing must help.
    for j, (nv, na) in enumerate([(0.2, 0.8), (0.8, 0.2), (0.5, 0.5)]):
        val = {v: labels[v] + rng.normal(0, 1, labels[v].shape) * [nv, na] for v in videos}
        test = {"t0": np.zeros((50, 2))}
        members.append(Member(f"trial{j}", val, test))
    res = build_ensemble("va", members, videos, ["t0"], labels, valid)
    singles = [score_predictions("va", m.val, videos, labels, valid) for m in members]
    assert res.best_single[1] == pytest.approx(max(singles))
    assert res.val_score > max(singles) + 0.05
    # Valence leans on trial0, arousal on trial1: selection is per target.
    assert max(res.recipe.weights["valence"], key=res.recipe.weights["valence"].get) == "trial0"
    assert max(res.recipe.weights["arousal"], key=res.recipe.weights["arousal"].get) == "trial1"
    assert res.recipe.smoothing["valence"] > 1  # the noise is white: smoothing pays
    assert {"A->B", "B->A", "mean", "best single mean"} <= set(res.split_half)
    assert res.test["t0"].shape == (50, 2)
    # The reported score is the official global CCC of the ensemble's predictions.
    m = np.concatenate([valid[v] for v in videos])
    p = np.concatenate([res.val[v] for v in videos])[m]
    t = np.concatenate([labels[v] for v in videos])[m]
    assert res.val_score == pytest.approx((ccc(p[:, 0], t[:, 0]) + ccc(p[:, 1], t[:, 1])) / 2)


def test_one_member_ensemble_is_that_member():
    labels, valid = _va_problem(videos=4)
    videos = sorted(labels)
    member = Member("only", {v: labels[v] * 0.5 for v in videos}, {"t": np.ones((3, 2))})
    res = build_ensemble("va", [member], videos, ["t"], labels, valid)
    assert res.val_score >= res.best_single[1] - 1e-9


def test_expr_ensemble_averages_probabilities():
    rng = np.random.default_rng(0)
    labels = {f"v{i}": rng.integers(0, 8, 200) for i in range(4)}
    valid = {v: np.ones(200, bool) for v in labels}
    members = []
    for j in range(3):
        val = {}
        for v, y in labels.items():
            p = rng.random((200, 8))
            p[np.arange(200), y] += 0.9  # each member right more often than not
            val[v] = p / p.sum(1, keepdims=True)
        members.append(Member(f"t{j}", val, {"x": np.full((5, 8), 1 / 8)}))
    res = build_ensemble("expr", members, sorted(labels), ["x"], labels, valid)
    assert res.val_score >= res.best_single[1]
    assert res.test["x"].shape == (5, 8)
