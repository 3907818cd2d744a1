"""Greedy ensemble selection, smoothing, the held-out estimate and the refit, on constructed
predictions whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_ray.ensemble import Member, build_ensemble, fit_recipe
from abaw_ray.metrics import ccc, score_split
from abaw_ray.smoothing import NO_SMOOTHING


def _va_problem(seed=0, videos=6, n=300):
    rng = np.random.default_rng(seed)
    labels, valid = {}, {}
    for i in range(videos):
        t = np.linspace(0, 6, n)
        labels[f"v{i}"] = (np.stack([np.sin(t + i), np.cos(0.7 * t + i)], 1) * 0.8).astype(
            np.float32
        )
        valid[f"v{i}"] = rng.random(n) > 0.05
    return labels, valid


def test_selection_picks_the_right_member_for_each_target():
    labels, valid = _va_problem()
    videos = sorted(labels)
    rng = np.random.default_rng(1)
    noise = {v: rng.normal(0, 0.6, labels[v].shape) for v in videos}
    # exact valence, noisy arousal / noisy valence, exact arousal / noise only
    a = {v: np.stack([labels[v][:, 0], labels[v][:, 1] + noise[v][:, 1]], 1) for v in videos}
    b = {v: np.stack([labels[v][:, 0] + noise[v][:, 0], labels[v][:, 1]], 1) for v in videos}
    c = {v: noise[v] for v in videos}
    members = [Member("A", a, {}), Member("B", b, {}), Member("C", c, {})]
    fit = fit_recipe("va", members, videos, labels, valid)
    # A perfect member cannot be improved on: selection keeps it alone, unsmoothed.
    assert fit.recipe.weights == {"valence": {"A": 1.0}, "arousal": {"B": 1.0}}
    assert fit.recipe.smoothing == {"valence": NO_SMOOTHING, "arousal": NO_SMOOTHING}
    assert fit.scores["ccc"] == pytest.approx(1.0)
    # The best single trial is the best on the mean CCC: here A and B tie below 1.
    expected = {
        m.trial_id: score_split("va", m.validation, videos, labels, valid)["ccc"] for m in members
    }
    assert fit.best_single[1]["ccc"] == pytest.approx(max(expected.values()))
    assert expected["C"] < 0.1


def test_expr_ensemble_averages_class_probabilities():
    n = 100
    labels = {"v0": np.zeros(n, np.int64), "v1": np.ones(n, np.int64)}
    valid = {v: np.ones(n, bool) for v in labels}
    half = np.arange(n) < n // 2

    def member(wrong_on: np.ndarray, y: int) -> np.ndarray:
        # 0.45 on the right class and 0.55 on a wrong one where ``wrong_on``, else 0.9
        p = np.full((n, 8), 0.0)
        p[:, y] = np.where(wrong_on, 0.45, 0.9)
        p[:, 7] = 1 - p[:, y]
        return p

    p0 = {v: member(half, y) for v, y in (("v0", 0), ("v1", 1))}
    p1 = {v: member(~half, y) for v, y in (("v0", 0), ("v1", 1))}
    members = [Member("t0", p0, {"x": p0["v0"]}), Member("t1", p1, {"x": p1["v0"]})]
    res = build_ensemble("expr", members, ["v0", "v1"], [], ["x"], labels, valid)
    # Each member alone is right on half the frames; their averaged probabilities everywhere.
    assert res.selection.best_single[1]["f1"] < 0.5
    assert res.selection.recipe.weights["classes"] == {"t0": 1.0, "t1": 1.0}
    assert res.selection.scores["f1"] == pytest.approx(1.0)
    for v in labels:
        np.testing.assert_allclose(res.validation[v], (p0[v] + p1[v]) / 2)
    np.testing.assert_allclose(res.test["x"], (p0["v0"] + p1["v0"]) / 2)


def _three_members(labels, videos, seed=1):
    rng = np.random.default_rng(seed)
    members = []
    for j, (nv, na) in enumerate([(0.2, 0.8), (0.8, 0.2), (0.5, 0.5)]):
        val = {v: labels[v] + rng.normal(0, 1, labels[v].shape) * [nv, na] for v in videos}
        members.append(Member(f"trial{j}", val, {"t0": np.zeros((50, 2))}))
    return members


def test_held_out_videos_never_influence_selection():
    labels, valid = _va_problem(videos=6)
    selection, held = ["v0", "v1", "v2", "v3"], ["v4", "v5"]
    members = _three_members(labels, sorted(labels))
    res = build_ensemble("va", members, selection, held, ["t0"], labels, valid)

    # Perturb everything about the held-out videos: their labels and every prediction.
    rng = np.random.default_rng(7)
    labels2 = {v: (-labels[v] if v in held else labels[v]) for v in labels}
    members2 = [
        Member(
            m.trial_id,
            {v: (rng.normal(size=p.shape) if v in held else p) for v, p in m.validation.items()},
            m.test,
        )
        for m in members
    ]
    res2 = build_ensemble("va", members2, selection, held, ["t0"], labels2, valid)
    assert res2.selection.recipe == res.selection.recipe
    assert res2.selection.best_single == res.selection.best_single
    assert res2.selection.scores == res.selection.scores
    assert res2.holdout["ensemble"]["ccc"] != pytest.approx(res.holdout["ensemble"]["ccc"])

    # The estimate is the selection recipe applied to the held-out videos, scored officially.
    assert res.selection.videos == tuple(selection)
    m = np.concatenate([valid[v] for v in held])
    best = next(x for x in members if x.trial_id == res.selection.best_single[0])
    p = np.concatenate([best.validation[v] for v in held])[m]
    t = np.concatenate([labels[v] for v in held])[m]
    by_hand = (ccc(p[:, 0], t[:, 0]) + ccc(p[:, 1], t[:, 1])) / 2
    assert res.holdout["best_single"]["ccc"] == pytest.approx(by_hand)


def test_submission_is_refit_on_all_validation_videos():
    labels, valid = _va_problem(videos=6)
    videos = sorted(labels)
    members = _three_members(labels, videos)
    res = build_ensemble("va", members, videos[:4], videos[4:], ["t0"], labels, valid)
    refit = fit_recipe("va", members, videos, labels, valid)
    assert res.submitted.videos == tuple(videos)
    assert res.submitted.recipe == refit.recipe
    assert set(res.validation) == set(videos)
    # Without held-out videos the selection fit is the submitted one and there is no estimate.
    plain = build_ensemble("va", members, videos, [], ["t0"], labels, valid)
    assert plain.holdout == {} and plain.submitted is plain.selection


def test_no_member_is_an_error():
    labels, valid = _va_problem(videos=2)
    with pytest.raises(ValueError, match="nothing to ensemble"):
        build_ensemble("va", [], ["v0"], [], [], labels, valid)
