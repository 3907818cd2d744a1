"""The shifted-label control moves labels and their validity mask together, so it never
trains on the -5 / -1 markers of unannotated frames."""

from __future__ import annotations

from dataclasses import asdict, replace
from types import SimpleNamespace

import numpy as np
import pytest

from abaw_ray.data.labels import shift_within_videos
from abaw_ray.pseudo import PseudoLabels
from abaw_ray.train.bank import FeatureBank
from abaw_ray.train.loop import TrialConfig, trial_targets
from abaw_ray.train.windows import WindowSampler, shifted_labels, training_windows
from abaw_ray.tune.controls import control_runs


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
        splits={"train": ("t0", "t1"), "selection": ("v0",), "holdout": (), "test": ()},
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


def _pseudo_bank():
    """A bank of one training video labelled on its first 40 frames, a selection and a
    held-out video, a test video; and pseudo-labels of the unlabelled frames of all of them."""
    n = 80
    labelled = np.arange(n) < 40
    labels = {v: np.where(labelled, np.arange(n) % 8, -1) for v in ("a", "s", "h")}
    valid = {v: labelled.copy() for v in ("a", "s", "h")}
    splits = {"train": ("a",), "selection": ("s",), "holdout": ("h",), "test": ("t",)}
    au = {v: (np.arange(n)[:, None] + np.arange(12)) % 5 == 0 for v in ("a",)}
    others = {"au": ({v: y.astype(np.uint8) for v, y in au.items()}, {"a": labelled.copy()})}
    # what trial_targets reads
    bank = SimpleNamespace(task="expr", splits=splits, labels=labels, valid=valid, others=others)
    conf = np.where(labelled, 0.0, np.linspace(0.2, 1.0, n)).astype(np.float32)
    pseudo = PseudoLabels(
        "expr",
        {v: (np.arange(n) * 3 + 1) % 8 for v in ("a", "s", "h", "t")},
        {v: conf if v != "t" else np.full(n, 0.7, np.float32) for v in ("a", "s", "h", "t")},
    )
    return bank, pseudo


def test_a_pseudo_label_trials_control_shifts_every_target_it_trains_on():
    """The control of a trial that trained on pseudo-labels shifts them with the real labels:
    left in place they carry signal from models that saw the real labels, so the control
    would not be a null. It trains on as many frames, with the same weights, none of them on
    its own target."""
    bank, pseudo = _pseudo_bank()
    trial = TrialConfig(task="expr", pseudo_labels=True)
    videos, lab, ok, w, _ = trial_targets(trial, bank, pseudo)
    assert videos == ("a", "t")  # the selection and held-out videos are never trained on
    control = replace(trial, **control_runs(asdict(trial))["control"])
    cvideos, clab, cok, cw, _ = trial_targets(control, bank, pseudo)
    assert cvideos == videos
    for v in videos:
        assert cok[v].sum() == ok[v].sum() and sorted(cw[v]) == sorted(w[v])
        same = (clab[v] == lab[v]) & cok[v] & ok[v]
        assert same.mean() < 0.2, (v, same.mean())
    assert control_runs({"model": "tcn"}) == {"control": {"shift_labels": True}}
    runs = control_runs({"model": "tcn", "pseudo_labels": True})
    assert runs["no_pseudo"] == {"pseudo_labels": False}
    assert runs["pseudo_shifted"] == {"shift_pseudo_labels": True}


def test_the_pseudo_control_moves_only_the_pseudo_labels():
    bank, pseudo = _pseudo_bank()
    trial = TrialConfig(task="expr", pseudo_labels=True)
    _, lab, ok, _, _ = trial_targets(trial, bank, pseudo)
    _, plab, pok, _, _ = trial_targets(replace(trial, shift_pseudo_labels=True), bank, pseudo)
    real = bank.valid["a"]
    np.testing.assert_array_equal(plab["a"][real], lab["a"][real])  # real labels in place
    assert (plab["a"][~real] != lab["a"][~real]).mean() > 0.5


def test_a_multi_task_control_shifts_the_other_tasks_labels_with_its_own():
    """A multi-task trial also learns AU labels: its control moves them, with their mask, by
    the offset that moves its own labels, so no label it trains on keeps its frames."""
    bank, _ = _pseudo_bank()
    trial = TrialConfig(task="expr", aux_tasks="au")
    _, lab, ok, _, others = trial_targets(trial, bank)
    assert set(others) == {"au"} and others["au"][0]["a"] is bank.others["au"][0]["a"]
    _, clab, cok, _, cothers = trial_targets(replace(trial, shift_labels=True), bank)
    (y, m), (cy, cm) = others["au"], cothers["au"]
    # The offset that moved the EXPR labels (their mask: the first 40 frames) moved the AUs.
    (offset,) = [k for k in range(1, 80) if np.array_equal(np.roll(ok["a"], k), cok["a"])]
    np.testing.assert_array_equal(cm["a"], np.roll(m["a"], offset))
    np.testing.assert_array_equal(cy["a"], np.roll(y["a"], offset, axis=0))
    assert not np.array_equal(cy["a"], y["a"])
    with pytest.raises(ValueError, match="no VA labels"):
        trial_targets(TrialConfig(task="expr", aux_tasks="va"), bank)
    with pytest.raises(ValueError, match="other tasks are va and au"):
        TrialConfig.from_dict({"task": "expr", "aux_tasks": "expr"})
