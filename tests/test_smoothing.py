import numpy as np
import pytest

from abaw_ray.metrics import score_split
from abaw_ray.smoothing import (
    DEFAULT_KINDS,
    DEFAULT_WIDTHS,
    NO_SMOOTHING,
    Smoothing,
    box_filter,
    choose_smoothing,
    format_table,
    gaussian_filter,
    gaussian_kernel,
    gaussian_sigma,
    mode_filter,
)


def test_box_filter_matches_hand_computation_with_both_edge_paddings():
    x = np.array([1.0, 2.0, 3.0, 10.0, 4.0])
    # width 5, reflect: 2 1 | 1 2 3 10 4 | 4 10
    reflect = [(2 + 1 + 1 + 2 + 3) / 5, (1 + 1 + 2 + 3 + 10) / 5, 20 / 5, 23 / 5, 31 / 5]
    np.testing.assert_allclose(box_filter(x, 5), reflect, atol=1e-12)
    # width 5, nearest: 1 1 | 1 2 3 10 4 | 4 4
    nearest = [8 / 5, 17 / 5, 20 / 5, 23 / 5, 25 / 5]
    np.testing.assert_allclose(box_filter(x, 5, edge="nearest"), nearest, atol=1e-12)
    # width 3: a 1-frame pad is the same either way; [T, 2] filters each column.
    three = [4 / 3, 2.0, 5.0, 17 / 3, 6.0]
    both = box_filter(np.stack([x, -x], 1), 3)
    np.testing.assert_allclose(both, np.stack([three, -np.array(three)], 1), atol=1e-12)
    np.testing.assert_array_equal(box_filter(x, 1), x)


def test_box_filter_does_not_shrink_edges_and_handles_short_videos():
    x = np.full((4, 2), 0.7)
    np.testing.assert_allclose(box_filter(x, 75), x, atol=1e-12)  # window far wider than T
    np.testing.assert_allclose(box_filter(x, 75, edge="nearest"), x, atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        box_filter(x, 4)


def test_gaussian_kernel_and_its_width():
    sigma = gaussian_sigma(5)
    assert sigma == pytest.approx(np.sqrt(2.0))  # the variance of a 5-frame box: (25 - 1) / 12
    k = gaussian_kernel(sigma)
    offsets = np.arange(-5, 6)  # ceil(3 sqrt 2) = 5
    expected = np.exp(-(offsets**2) / (2 * sigma**2))
    np.testing.assert_allclose(k, expected / expected.sum(), atol=1e-12)
    assert gaussian_sigma(1) == 0.0 and list(gaussian_kernel(0.0)) == [1.0]


@pytest.mark.parametrize("edge", ["reflect", "nearest"])
def test_gaussian_preserves_a_constant(edge):
    x = np.stack([np.full(30, 0.3), np.full(30, -0.8)], 1)
    for sigma in (0.5, 2.0, 21.6):
        np.testing.assert_allclose(gaussian_filter(x, sigma, edge=edge), x, atol=1e-12)


def test_gaussian_reduces_white_noise_variance_by_sum_of_squared_weights():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 2.0, size=(200_000, 2))
    sigma = gaussian_sigma(15)
    k = gaussian_kernel(sigma)
    out = gaussian_filter(noise, sigma)
    r = len(k) // 2
    ratio = out[r:-r].var(0) / noise.var(0)  # interior frames: no padding involved
    expected = (k**2).sum()
    assert expected == pytest.approx(0.0655, abs=1e-3)
    np.testing.assert_allclose(ratio, expected, rtol=0.05)
    assert (ratio < 0.1).all()


def test_mode_filter_removes_isolated_flips_and_keeps_long_runs():
    seq = [0, 0, 0, 3, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 5, 5, 5, 5, 5, 4]
    # width 5: the single 3 (frame 3), the single 1 (frame 15) and the single 4 at the end
    # (truncated window 5 5 4) are outvoted; the runs of 0, 2 and 5 and their boundaries stay.
    expected = [0] * 7 + [2] * 12 + [5] * 6
    np.testing.assert_array_equal(mode_filter(np.array(seq), 5), expected)
    # A 3-frame run survives width 5 (3 of 5 votes) but not width 9 around it.
    run = np.array([0] * 10 + [6] * 3 + [0] * 10)
    np.testing.assert_array_equal(mode_filter(run, 5), run)
    np.testing.assert_array_equal(mode_filter(run, 9), np.zeros(23))


def test_mode_filter_breaks_ties_toward_the_frame_itself_then_the_nearer_class():
    # Frame 1's truncated window is 1 1 6 6: a tie, kept as its own class 1.
    np.testing.assert_array_equal(mode_filter(np.array([1, 1, 6, 6, 6]), 5), [1, 1, 6, 6, 6])
    # Frame 2's window 0 1 2 1 0: 0 and 1 tie at 2 votes, 2 (its own) has 1; the 1s are nearer.
    # Frames 0 and 4 (windows 0 1 2 and 2 1 0): a 3-way tie, kept as their own class.
    np.testing.assert_array_equal(mode_filter(np.array([0, 1, 2, 1, 0]), 5), [0, 1, 1, 1, 0])


def test_probability_smoothing_weighs_confidence_unlike_the_mode_filter():
    # Class 4 with probability 0.95, 0.4, 0.4 (the rest on class 6): per-frame argmax 4 6 6.
    p = np.zeros((3, 8), np.float32)
    p[:, 4] = [0.95, 0.4, 0.4]
    p[:, 6] = 1 - p[:, 4]
    box = Smoothing("box", 3).apply("expr", p)
    # reflect padding: 0.95 | 0.95 0.4 0.4 | 0.4
    expected4 = [(0.95 + 0.95 + 0.4) / 3, (0.95 + 0.4 + 0.4) / 3, 0.4]
    np.testing.assert_allclose(box[:, 4], expected4, atol=1e-6)
    np.testing.assert_allclose(box.sum(1), 1.0, atol=1e-6)
    assert box.dtype == np.float32 and box.shape == p.shape
    np.testing.assert_array_equal(box.argmax(1), [4, 4, 6])  # frame 1's confident neighbour wins
    mode = Smoothing("mode", 3).apply("expr", p)
    np.testing.assert_array_equal(mode, np.eye(8, dtype=np.float32)[[4, 6, 6]])  # votes only


def test_probability_smoothing_reads_logits_as_their_softmax():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(8), size=40)
    logits = np.log(p) + 3.0
    for s in (Smoothing("box", 9), Smoothing("gaussian", 9)):
        np.testing.assert_allclose(s.apply("expr", logits), s.apply("expr", p), atol=1e-10)
    assert NO_SMOOTHING.apply("expr", logits) is logits


def test_smoothing_validates_its_arguments():
    with pytest.raises(ValueError, match="kind"):
        Smoothing("savgol", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="odd"):
        Smoothing("box", 8)
    with pytest.raises(ValueError, match="for EXPR only"):
        Smoothing("mode", 5).apply("va", np.zeros((10, 2)))
    with pytest.raises(ValueError, match="for AU only"):
        Smoothing("median", 5).apply("expr", np.zeros((10, 8)))
    assert str(Smoothing("gaussian", 25)) == "gaussian(25)" and str(NO_SMOOTHING) == "none"


def _va_case(rng: np.random.Generator, flip: bool, noise: float):
    labels, preds, valid = {}, {}, {}
    for i in range(4):
        t = np.arange(500 + 100 * i)
        if flip:
            target = np.stack([0.5 * (-1.0) ** t, -0.4 * (-1.0) ** t], 1)
        else:
            target = np.stack([0.6 * np.sin(t / 40 + i), 0.5 * np.cos(t / 65 + 2 * i)], 1)
        v = f"video{i}"
        labels[v] = target
        preds[v] = (target + rng.normal(0, noise, target.shape)).astype(np.float32)
        valid[v] = rng.random(len(t)) > 0.1
    return preds, labels, valid


def _expr_case(rng: np.random.Generator, flip: bool):
    labels, preds, valid = {}, {}, {}
    for i in range(4):
        n = 480 + 120 * i
        if flip:
            classes = np.arange(n) % 3 + 3 * (i % 2)  # changes every frame, never repeats
        else:
            classes = np.repeat(rng.permutation(8), n // 8)  # runs of 60 frames or more
        v = f"video{i}"
        labels[v] = classes
        logits = 1.5 * np.eye(8)[classes] + rng.normal(0, 1, (n, 8))
        e = np.exp(logits)
        preds[v] = (e / e.sum(1, keepdims=True)).astype(np.float32)
        valid[v] = rng.random(n) > 0.1
    return preds, labels, valid


@pytest.mark.parametrize("task", ["va", "expr"])
def test_choose_smoothing_smooths_noisy_predictions_of_a_smooth_target(task):
    rng = np.random.default_rng(2)
    preds, labels, valid = _va_case(rng, False, 0.4) if task == "va" else _expr_case(rng, False)
    videos = sorted(preds)
    best, score, table = choose_smoothing(task, preds, videos, labels, valid)
    assert len(table) == 1 + len(DEFAULT_KINDS[task]) * len(DEFAULT_WIDTHS)
    assert list(table)[0] == NO_SMOOTHING
    assert best.kind != "none" and best.width > 1
    assert score == max(table.values()) == table[best]
    raw = table[NO_SMOOTHING]
    assert score > raw + 0.1  # here VA CCC 0.65 -> 0.99, EXPR F1 0.56 -> 0.99
    key = "ccc" if task == "va" else "f1"
    smoothed = {v: best.apply(task, preds[v]) for v in videos}
    assert score_split(task, smoothed, videos, labels, valid)[key] == pytest.approx(score)
    text = format_table(table, task)
    assert "none" in text and f"{score:.4f}*" in text


@pytest.mark.parametrize("task", ["va", "expr"])
def test_choose_smoothing_keeps_none_when_the_target_flips_every_frame(task):
    rng = np.random.default_rng(3)
    preds, labels, valid = _va_case(rng, True, 0.2) if task == "va" else _expr_case(rng, True)
    videos = sorted(preds)
    best, score, table = choose_smoothing(task, preds, videos, labels, valid)
    assert best == NO_SMOOTHING and score == table[NO_SMOOTHING]
    assert all(v < score for s, v in table.items() if s != NO_SMOOTHING)


def test_choose_smoothing_ties_go_to_none():
    # One class throughout, predicted right on every frame: every candidate scores F1 = 1.
    p = np.eye(8, dtype=np.float32)[np.full(100, 3)] * 0.6 + 0.05
    labels, valid = {"a": np.full(100, 3)}, {"a": np.ones(100, bool)}
    best, score, table = choose_smoothing("expr", {"a": p}, ["a"], labels, valid)
    assert best == NO_SMOOTHING and score == 1.0 and set(table.values()) == {1.0}


def test_smoothing_stays_within_each_video():
    preds = {"a": np.zeros((20, 2)), "b": np.ones((20, 2))}
    labels = {"a": np.zeros((20, 2)), "b": np.ones((20, 2))}
    valid = {v: np.ones(20, bool) for v in preds}
    best, score, table = choose_smoothing("va", preds, ["a", "b"], labels, valid, widths=(45,))
    # Filtering a constant video returns it as it is: nothing leaks across the boundary.
    assert best == NO_SMOOTHING
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in table.values())
    np.testing.assert_allclose(Smoothing("gaussian", 45).apply("va", preds["b"]), 1.0)


def test_the_median_filter_is_each_units_majority_vote_at_any_threshold():
    p = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.6], [0.2, 0.1]])
    out = Smoothing("median", 3).apply("au", p)
    # By hand, reflected ends (p0 p0 p1 ... p4 p4): unit 0 medians of (0.1 0.1 0.8),
    # (0.1 0.8 0.3), (0.8 0.3 0.6), (0.3 0.6 0.2), (0.6 0.2 0.2).
    np.testing.assert_allclose(out[:, 0], [0.1, 0.3, 0.6, 0.3, 0.2])
    np.testing.assert_allclose(out[:, 1], [0.9, 0.7, 0.6, 0.6, 0.1])
    rng = np.random.default_rng(0)
    x = rng.random((200, 12))
    for width in (5, 15):
        med = Smoothing("median", width).apply("au", x)
        for th in (0.3, 0.5, 0.71):
            votes = box_filter((x >= th).astype(float), width)
            np.testing.assert_array_equal(med >= th, votes > 0.5)
