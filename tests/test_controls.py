"""The shifted-label control moves labels and their validity mask together, so it never
trains on the -5 / -1 markers of unannotated frames."""

from __future__ import annotations

import numpy as np

from abaw_ray.data.labels import shift_within_videos
from abaw_ray.train.data import FeatureBank, WindowSampler, shifted_labels, training_windows


def _labels(n: int, gap: slice) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 4, n)
    values = np.stack([np.sin(t), np.cos(t)], 1).astype(np.float32) * 0.9
    valid = np.ones(n, bool)
    values[gap], valid[gap] = -5.0, False  # an unannotated stretch, as in the files
    return values, valid


def test_labels_and_mask_shift_by_one_offset():
    labels, valid = {}, {}
    labels["a"], valid["a"] = _labels(200, slice(20, 60))
    labels["b"], valid["b"] = _labels(120, slice(0, 10))
    shifted, shifted_valid = shift_within_videos(labels, valid, ["a", "b"], seed=3)
    for v in ("a", "b"):
        n = len(labels[v])
        offsets = [k for k in range(n) if np.array_equal(np.roll(valid[v], k), shifted_valid[v])]
        assert offsets and all(n // 4 <= k < 3 * n // 4 for k in offsets)
        k = offsets[0]
        np.testing.assert_array_equal(shifted[v], np.roll(labels[v], k, axis=0))
        # every frame the control trains on holds a real label, never the -5 marker
        assert np.all(np.abs(shifted[v][shifted_valid[v]]) <= 1.0)
        assert shifted_valid[v].sum() == valid[v].sum()
        assert not np.array_equal(shifted[v], labels[v])


def test_only_the_named_videos_move():
    labels, valid = {}, {}
    labels["a"], valid["a"] = _labels(100, slice(5, 9))
    labels["val"], valid["val"] = _labels(100, slice(50, 70))
    shifted, shifted_valid = shift_within_videos(labels, valid, ["a"], seed=0)
    assert shifted["val"] is labels["val"] and shifted_valid["val"] is valid["val"]


def _bank() -> FeatureBank:
    rng = np.random.default_rng(0)
    labels, valid, frames = {}, {}, {}
    for v, n, gap in (
        ("t0", 150, slice(0, 60)),
        ("t1", 90, slice(40, 90)),
        ("v0", 80, slice(0, 5)),
    ):
        labels[v], valid[v] = _labels(n, gap)
        frames[v] = rng.normal(size=(n, 3)).astype(np.float16)
    return FeatureBank(
        task="va",
        keys=("f",),
        modality={"f": "visual"},
        splits={"train": ("t0", "t1"), "val": ("v0",), "holdout": (), "test": ()},
        num_frames={v: len(labels[v]) for v in labels},
        frames={"f": frames},
        native={},
        positions={},
        mean={"f": np.zeros(3, np.float32)},
        std={"f": np.ones(3, np.float32)},
        labels=labels,
        valid=valid,
        face_mask={v: np.ones(len(labels[v]), bool) for v in labels},
        dims={"f": 3},
    )


def test_control_batches_hold_no_invalid_targets():
    bank = _bank()
    labels, valid = shifted_labels(bank, seed=1)
    sampler = WindowSampler(bank, ["f"], "interp", 32, labels, valid)
    windows = training_windows(bank, 32, 16, sampler.valid)
    batch = sampler.batch([(bank.splits["train"][i], int(s)) for i, s in windows])
    targets = batch.target.numpy()[batch.valid.numpy()]
    assert len(targets) > 100
    assert np.all(np.abs(targets) <= 1.0)
    # and the sampler trains on the shifted mask, not the bank's
    assert sum(valid[v].sum() for v in bank.splits["train"]) == sum(
        bank.valid[v].sum() for v in bank.splits["train"]
    )
    assert any(not np.array_equal(valid[v], bank.valid[v]) for v in bank.splits["train"])
    assert valid["v0"] is bank.valid["v0"]  # validation is scored on the true labels
