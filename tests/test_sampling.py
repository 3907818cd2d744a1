"""Class-balanced window sampling (EXPR), on a constructed case with known frequencies."""

from __future__ import annotations

import numpy as np

from abaw_ray.train.windows import balanced_window_weights


def test_windows_of_rare_classes_are_drawn_as_often_as_common_ones():
    # Video a: 80 frames of class 0; video b: 20 frames of class 1 then 20 of class 2, with the
    # class-2 stretch's second half unlabelled.
    labels = {"a": np.zeros(80, np.int64), "b": np.r_[np.ones(20), np.full(20, 2)].astype(int)}
    valid = {"a": np.ones(80, bool), "b": np.r_[np.ones(30, bool), np.zeros(10, bool)]}
    windows = np.array([[0, 0], [0, 20], [0, 40], [0, 60], [1, 0], [1, 20]])
    p = balanced_window_weights(windows, ["a", "b"], 20, labels, valid, num_classes=3)
    # Counts with one pseudo-count each: 81, 21, 11 of 113 -> inverse 113/81, 113/21, 113/11.
    inverse = 113 / np.array([81.0, 21.0, 11.0])
    expected = np.array([inverse[0]] * 4 + [inverse[1], inverse[2]])
    np.testing.assert_allclose(p, expected / expected.sum())
    # Drawn by these weights, each class's windows come up in proportions near 1 : 1 : 1
    # (four class-0 windows share class 0's part).
    share = [p[:4].sum(), p[4], p[5]]
    assert max(share) / min(share) < 2.0
    assert abs(p.sum() - 1) < 1e-12


def test_video_norm_standardises_each_video_by_its_own_statistics():
    from dataclasses import replace

    from abaw_ray.train.windows import WindowSampler
    from tests.test_controls import _bank

    bank = _bank()
    # Give video t1 a subject offset of +5 and a gain of 3 on every feature.
    frames = dict(bank.frames["f"])
    frames["t1"] = (frames["t1"].astype(np.float32) * 3 + 5).astype(np.float16)
    bank = replace(bank, frames={"f": frames})
    for v in ("t0", "t1"):
        n = bank.num_frames[v]
        whole = bank.frames["f"][v].astype(np.float32)
        per_video = WindowSampler(bank, ["f"], "interp", n, video_norm=True)
        x = per_video.batch([(v, 0)]).inputs[0][0].numpy()
        np.testing.assert_allclose(x, (whole - whole.mean(0)) / whole.std(0), atol=1e-4)
        # Without it, the bank's (training) statistics: here mean 0, std 1, so t1 keeps its
        # offset and gain.
        plain = WindowSampler(bank, ["f"], "interp", n).batch([(v, 0)]).inputs[0][0].numpy()
        np.testing.assert_allclose(plain, whole, atol=1e-6)
    assert abs(plain.mean() - 5) < 0.5


def test_a_windows_unlabelled_frames_never_weigh():
    """Frames marked -1 (unannotated) take no part in a window's weight: a window of 10 class-1
    frames and 10 unannotated ones weighs class 1's inverse frequency alone."""
    labels = {"a": np.zeros(60, np.int64), "b": np.r_[np.ones(20), np.full(10, -1), np.full(10, 2)]}
    labels["b"] = labels["b"].astype(np.int64)
    valid = {"a": np.ones(60, bool), "b": labels["b"] >= 0}
    windows = np.array([[0, 0], [1, 10], [1, 20]])
    p = balanced_window_weights(windows, ["a", "b"], 20, labels, valid, num_classes=3)
    inverse = 93 / np.array([61.0, 21.0, 11.0])  # counts 60 + 1, 20 + 1, 10 + 1 of 93
    expected = np.array([inverse[0], inverse[1], inverse[2]])
    np.testing.assert_allclose(p, expected / expected.sum())


def test_video_norm_uses_the_whole_videos_statistics_in_every_window():
    """A window shorter than its video is standardised by the video's statistics, not the
    window's own (a window standardised by itself would lose where it sits in the video)."""
    from dataclasses import replace

    from abaw_ray.train.windows import WindowSampler
    from tests.test_controls import _bank

    bank = _bank()
    frames = dict(bank.frames["f"])
    n = bank.num_frames["t1"]
    ramp = np.linspace(0, 4, n, dtype=np.float32)[:, None]  # a drift along the video
    frames["t1"] = (frames["t1"].astype(np.float32) * 3 + 5 + ramp).astype(np.float16)
    bank = replace(bank, frames={"f": frames})
    whole = bank.frames["f"]["t1"].astype(np.float32)
    window, start = 16, n // 2
    sampler = WindowSampler(bank, ["f"], "interp", window, video_norm=True)
    x = sampler.batch([("t1", start)]).inputs[0][0].numpy()
    expected = (whole[start : start + window] - whole.mean(0)) / whole.std(0)
    np.testing.assert_allclose(x, expected, atol=1e-4)
    own = whole[start : start + window]
    assert not np.allclose(x, (own - own.mean(0)) / own.std(0), atol=1e-2)
