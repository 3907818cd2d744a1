"""One trial end to end on Ray Train: data-parallel workers, checkpointed predictions, and a
score far above the shuffled-label control."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.trainer import build_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(corpus_root, tmp_path_factory):
    import ray

    from abaw_ray.train.prepare import prepare

    ray.init(num_cpus=2, include_dashboard=False)
    yield prepare(
        corpus_root,
        tmp_path_factory.mktemp("store"),
        ["face_hog", "logmel"],
        "va",
        alignments=("interp", "conv"),
    )
    ray.shutdown()


def _fit(prepared, trial, tmp_path, name, workers=1):
    trainer = build_trainer(
        trial, prepared.bank_ref, tmp_path, name, workers=workers, cpus_per_worker=0.5
    )
    return trainer.fit()


def test_data_parallel_trial_learns_and_checkpoints_predictions(prepared, tmp_path):
    trial = TrialConfig(
        features="face_hog+logmel", model="mfn", hidden=32, epochs=8, window=48, stride=24, lr=3e-3
    )
    result = _fit(prepared, trial, tmp_path, "mfn-2workers", workers=2)
    checkpoint, metrics = result.best_checkpoints[0]
    assert metrics["val_ccc"] > 0.4
    assert metrics["val_ccc"] == pytest.approx(
        (metrics["val_ccc_valence"] + metrics["val_ccc_arousal"]) / 2
    )
    preds = load_predictions(checkpoint.path)
    bank = prepared.bank
    assert set(preds["val"]) == set(bank.splits["val"])
    assert set(preds["test"]) == set(bank.splits["test"])
    for split in ("val", "test"):
        for v, p in preds[split].items():
            assert p.shape == (bank.num_frames[v], 2)  # every frame of every timeline
            assert np.abs(p).max() <= 1.0

    control = _fit(prepared, replace(trial, shuffle_labels=True), tmp_path, "mfn-control")
    control_ccc = control.best_checkpoints[0][1]["val_ccc"]
    assert control_ccc < metrics["val_ccc"] - 0.3


def test_conv_alignment_trial_runs(prepared, tmp_path):
    trial = TrialConfig(
        features="face_hog+logmel",
        model="attention",
        alignment="conv",
        hidden=32,
        epochs=3,
        window=48,
        stride=24,
    )
    result = _fit(prepared, trial, tmp_path, "attention-conv")
    assert result.best_checkpoints and np.isfinite(result.best_checkpoints[0][1]["val_ccc"])
