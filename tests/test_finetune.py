"""Finetune mode: frame index and held-out videos, the epoch's window order, augmentation,
class weights, the backbone+sequence model, and (slow) one end-to-end trial fed by Ray Data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from abaw_ray.data import load_corpus
from abaw_ray.metrics import score_split
from abaw_ray.train.finetune import (
    BackboneSequenceModel,
    DecodeWindows,
    augment,
    build_frame_index,
    epoch_windows,
    make_loss,
    predict_from_images,
    resize_square,
)
from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.windows import training_windows

WINDOW = 32


@pytest.fixture(scope="module")
def corpus(corpus_root):
    return load_corpus(corpus_root)


@pytest.fixture(scope="module")
def index(corpus):
    return build_frame_index(corpus, "expr")


@pytest.fixture(scope="module")
def held_index(corpus):
    return build_frame_index(corpus, "expr", holdout=1, seed=0)


def as_batch(rows):
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def test_frames_without_a_face_show_the_nearest_face(index):
    for v in index.splits["train"]:
        mask = index.face_mask[v]
        if mask.all():
            continue
        k = int(np.flatnonzero(~mask)[0])
        src = index.source_frame[v][k]
        assert mask[src - 1]  # a frame that has a face image
        present = np.flatnonzero(mask)
        assert abs(src - 1 - k) == np.abs(present - k).min()
        return
    pytest.fail("the corpus should have a frame without a face")


def test_holdout_splits_the_validation_videos(index, held_index):
    assert index.splits["holdout"] == ()
    assert len(held_index.splits["holdout"]) == 1
    assert not set(held_index.splits["selection"]) & set(held_index.splits["holdout"])
    assert sorted(held_index.splits["selection"] + held_index.splits["holdout"]) == sorted(
        index.splits["selection"]
    )
    v = held_index.splits["holdout"][0]
    assert held_index.num_frames[v] == index.num_frames[v] and v in held_index.labels


def test_epoch_order_crosses_videos_differs_per_epoch_and_is_reproducible(index):
    windows = training_windows(index, WINDOW, WINDOW)
    assert len({int(i) for i in windows[:, 0]}) == len(index.splits["train"]) > 1
    orders = {e: epoch_windows(index, windows, seed=0, epoch=e) for e in (0, 1)}
    for e, rows in orders.items():
        assert sorted(r["window"] for r in rows) == list(range(len(windows)))
        assert all(r["epoch"] == e for r in rows)
        assert len({r["video"] for r in rows[:8]}) > 1  # the first batch mixes videos
    assert [r["window"] for r in orders[0]] != [r["window"] for r in orders[1]]
    assert epoch_windows(index, windows, seed=0, epoch=1) == orders[1]
    assert epoch_windows(index, windows, seed=1, epoch=1) != orders[1]


def test_augment_keeps_shape_and_range():
    images = np.random.default_rng(0).integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)
    out = augment(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)
    # The crop's resize is torch's bilinear resize, up to rounding, in numpy.
    small = images[:3, :97, :97]
    ref = F.interpolate(
        torch.from_numpy(small).permute(0, 3, 1, 2).float(), size=(112, 112), mode="bilinear"
    )
    ref = ref.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()
    assert np.abs(resize_square(small, 112).astype(int) - ref).max() <= 1


def test_augmentation_is_fresh_each_epoch_and_reproducible(index):
    windows = training_windows(index, WINDOW, WINDOW)
    e0 = sorted(epoch_windows(index, windows, seed=0, epoch=0), key=lambda r: r["window"])[:3]
    e1 = sorted(epoch_windows(index, windows, seed=0, epoch=1), key=lambda r: r["window"])[:3]
    decode = DecodeWindows(index, WINDOW, seed=0)
    a, b = decode(as_batch(e0)), decode(as_batch(e1))
    assert a["frames"].shape == (3, WINDOW, 112, 112, 3)
    np.testing.assert_array_equal(a["target"], b["target"])
    np.testing.assert_array_equal(a["valid"], b["valid"])
    for i in range(3):
        assert not np.array_equal(a["frames"][i], b["frames"][i])
    # The same (seed, epoch, window): the same pixels, whichever batch and decoder it is in.
    again = DecodeWindows(index, WINDOW, seed=0)(as_batch([e0[2], e0[0]]))
    np.testing.assert_array_equal(again["frames"][0], a["frames"][2])
    np.testing.assert_array_equal(again["frames"][1], a["frames"][0])
    other_seed = DecodeWindows(index, WINDOW, seed=1)(as_batch(e0[:1]))
    assert not np.array_equal(other_seed["frames"][0], a["frames"][0])


def test_class_weights_reach_the_loss(index):
    # Training frames: mostly Neutral, a few Anger and Happiness, other classes absent.
    labels, valid = dict(index.labels), dict(index.valid)
    train = index.splits["train"]
    for i, v in enumerate(train):
        lab = np.zeros(index.num_frames[v], np.int64)
        lab[: 10 * (i + 1)] = 1
        lab[-5:] = 4
        labels[v], valid[v] = lab, np.ones(len(lab), bool)
    imbalanced = replace(index, labels=labels, valid=valid)
    trial = TrialConfig(task="expr", loss="ce", label_smoothing=0.0, class_weights=True)
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 6, 8, generator=g)
    target = torch.randint(0, 8, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    loss = make_loss(trial, imbalanced, torch.device("cpu"))(pred, target, mask)

    counts = np.bincount(np.concatenate([labels[v] for v in train]), minlength=8) + 1.0
    weights = counts.sum() / (8 * counts)
    weights = torch.tensor(weights / weights.mean(), dtype=torch.float32)
    expected = F.cross_entropy(pred[mask], target[mask], weight=weights)
    torch.testing.assert_close(loss, expected)
    unweighted = make_loss(replace(trial, class_weights=False), imbalanced, torch.device("cpu"))
    assert not torch.isclose(unweighted(pred, target, mask), expected)


def test_backbone_sequence_model_and_whole_video_prediction(index):
    torch.manual_seed(0)
    model = BackboneSequenceModel(
        "mobilenetv3", True, "expr_transformer", "expr", dict(hidden=32, layers=1, heads=4)
    )
    frames = torch.randint(0, 255, (2, 6, 112, 112, 3), dtype=torch.uint8)
    out = model(frames)
    assert out["pred"].shape == (2, 6, 8)
    out["pred"].sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    video = index.splits["selection"][0]
    preds = predict_from_images(model, index, [video], 32, torch.device("cpu"))
    assert preds[video].shape == (index.num_frames[video], 8)
    np.testing.assert_allclose(preds[video].sum(1), 1.0, atol=1e-5)


def test_build_trainer_refuses_an_unknown_mode():
    from abaw_ray.train.trainer import build_trainer

    with pytest.raises(ValueError, match="mode"):
        build_trainer(TrialConfig(mode="thawed"), None, "/tmp", "x")


@pytest.mark.slow
def test_finetune_trial_runs_end_to_end_on_ray_data(held_index, tmp_path):
    import ray

    from abaw_ray.train.finetune import epoch_dataset
    from abaw_ray.train.trainer import build_trainer

    index = held_index
    # "local": a new instance even where another runs on the host (ray.init alone joins it)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        ref = ray.put(index)
        # Ray Data decodes the epoch's rows in their order, with the same pixels as in-process.
        rows = epoch_windows(index, training_windows(index, 8, 48), seed=0, epoch=1)[:5]
        decoded = epoch_dataset(rows, ref, 8, seed=0).take_batch(5)
        local = DecodeWindows(index, 8, seed=0)(as_batch(rows))
        np.testing.assert_array_equal(decoded["frames"], local["frames"])
        np.testing.assert_array_equal(decoded["target"], local["target"])

        trial = TrialConfig.from_dict(
            dict(
                task="expr",
                mode="finetune",
                features="mobilenetv3.tiny",
                model="expr_transformer",
                hidden=32,
                layers=1,
                epochs=2,
                window=16,
                stride=48,
                batch_size=4,
                class_weights=True,
            )
        )
        result = build_trainer(trial, ref, tmp_path, "finetune").fit()
    finally:
        ray.shutdown()
    assert result.error is None
    checkpoint, metrics = result.best_checkpoints[0]
    assert np.isfinite(metrics["train_loss"])
    preds = load_predictions(checkpoint.path)
    # The reported score is the official macro F1 of the checkpoint's own predictions, on the
    # selection videos only.
    rescored = score_split(
        "expr", preds["selection"], index.splits["selection"], index.labels, index.valid
    )
    assert metrics["val_f1"] == pytest.approx(rescored["f1"], abs=1e-6)
    assert sorted(preds["holdout"]) == sorted(index.splits["holdout"]) != []
    for split in ("selection", "holdout", "test"):
        assert set(preds[split]) == set(index.splits[split])
        for v, p in preds[split].items():
            assert p.shape == (index.num_frames[v], 8)
