"""Finetune mode: frame index, augmentation, the backbone+sequence model, and (slow) one
end-to-end trial fed by Ray Data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abaw_ray.data import load_corpus
from abaw_ray.train.finetune import (
    BackboneSequenceModel,
    augment,
    build_frame_index,
    predict_from_images,
)
from abaw_ray.train.loop import TrialConfig, load_predictions


@pytest.fixture(scope="module")
def index(corpus_root):
    return build_frame_index(load_corpus(corpus_root), "expr")


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


def test_augment_keeps_shape_and_range():
    images = np.random.default_rng(0).integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)
    out = augment(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)


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
    video = index.splits["val"][0]
    preds = predict_from_images(model, index, [video], 32, torch.device("cpu"))
    assert preds[video].shape == (index.num_frames[video], 8)
    np.testing.assert_allclose(preds[video].sum(1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_finetune_trial_runs_end_to_end_on_ray_data(index, tmp_path):
    import ray

    from abaw_ray.train.finetune import build_finetune_trainer

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        trial = TrialConfig(
            task="expr",
            features="mobilenetv3.tiny",
            model="expr_transformer",
            hidden=32,
            layers=1,
            epochs=2,
            window=32,
            stride=32,
            batch_size=8,
        )
        result = build_finetune_trainer(trial, index, tmp_path, "finetune").fit()
    finally:
        ray.shutdown()
    checkpoint, metrics = result.best_checkpoints[0]
    assert 0.0 <= metrics["val_f1"] <= 1.0
    preds = load_predictions(checkpoint.path)
    for split in ("val", "test"):
        assert set(preds[split]) == set(index.splits[split])
        for v, p in preds[split].items():
            assert p.shape == (index.num_frames[v], 8)
