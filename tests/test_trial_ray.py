"""One trial end to end on Ray Train: data-parallel workers, checkpointed predictions of every
split (held-out videos included), and scores far above their shifted-label controls, each
trained in the same test."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from abaw_ray.metrics import score_split
from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.trainer import build_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(corpus_root, tmp_path_factory):
    import ray

    from abaw_ray.train.prepare import prepare

    # "local": a new instance even where another runs on the host (ray.init alone joins it)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield prepare(
        corpus_root,
        tmp_path_factory.mktemp("store"),
        ["face_hog", "logmel"],
        "va",
        alignments=("interp", "conv"),
        holdout=1,  # of the test corpus's two validation videos
    )
    ray.shutdown()


def _fit(prepared, trial, tmp_path, name, workers=1):
    trainer = build_trainer(
        trial, prepared.bank_ref, tmp_path, name, workers=workers, cpus_per_worker=0.5
    )
    return trainer.fit()


def test_data_parallel_trial_learns_and_checkpoints_predictions(prepared, tmp_path):
    trial = TrialConfig.from_dict(
        dict(
            features="face_hog+logmel",
            model="mfn",
            hidden=32,
            epochs=8,
            window=48,
            stride=24,
            lr=3e-3,
        )
    )
    result = _fit(prepared, trial, tmp_path, "mfn-2workers", workers=2)
    checkpoint, metrics = result.best_checkpoints[0]
    assert metrics["val_ccc"] > 0.4
    assert metrics["val_ccc"] == pytest.approx(
        (metrics["val_ccc_valence"] + metrics["val_ccc_arousal"]) / 2
    )
    preds = load_predictions(checkpoint.path)
    bank = prepared.bank
    assert len(bank.splits["holdout"]) == 1
    assert not set(bank.splits["holdout"]) & set(bank.splits["selection"])
    for split in ("selection", "holdout", "test"):
        assert set(preds[split]) == set(bank.splits[split])
    # The reported score is the official one of the selection videos only.
    by_hand = score_split(
        "va", preds["selection"], bank.splits["selection"], bank.labels, bank.valid
    )
    assert metrics["val_ccc"] == pytest.approx(by_hand["ccc"], abs=1e-6)
    for split in ("selection", "holdout", "test"):
        for v, p in preds[split].items():
            assert p.shape == (bank.num_frames[v], 2)  # every frame of every timeline
            assert np.abs(p).max() <= 1.0

    control = _fit(prepared, replace(trial, shift_labels=True), tmp_path, "mfn-control")
    control_ccc = control.best_checkpoints[0][1]["val_ccc"]
    assert control_ccc < metrics["val_ccc"] - 0.3


def test_conv_alignment_beats_its_control(prepared, tmp_path):
    trial = TrialConfig.from_dict(
        dict(
            features="face_hog+logmel",
            model="attention",
            alignment="conv",
            hidden=32,
            epochs=5,
            window=48,
            stride=24,
            lr=3e-3,
        )
    )
    conv = _fit(prepared, trial, tmp_path, "attention-conv").best_checkpoints[0][1]["val_ccc"]
    control = _fit(prepared, replace(trial, shift_labels=True), tmp_path, "attention-conv-ctl")
    control_ccc = control.best_checkpoints[0][1]["val_ccc"]
    assert conv > 0.4
    assert control_ccc < conv - 0.3


def test_pseudo_labels_train_only_as_much_as_their_confidence(prepared, tmp_path):
    """Pseudo-labels of confidence 0 change nothing (the same predictions, to float rounding:
    the weighted loss sums where the plain one averages); confident nonsense pseudo-labels
    (valence 0.9 on every test frame) pull the test videos' predictions towards it."""
    import ray

    from abaw_ray.pseudo import PseudoLabels

    bank = prepared.bank
    test = list(bank.splits["test"])
    target = {v: np.tile([0.9, 0.0], (bank.num_frames[v], 1)).astype(np.float32) for v in test}
    zero = PseudoLabels("va", target, {v: np.zeros(len(t), np.float32) for v, t in target.items()})
    sure = PseudoLabels("va", target, {v: np.ones(len(t), np.float32) for v, t in target.items()})
    trial = TrialConfig.from_dict(
        dict(features="face_hog+logmel", model="attention", hidden=32, epochs=4, window=48, lr=3e-3)
    )

    def fit(name, pseudo=None):
        trainer = build_trainer(
            replace(trial, pseudo_labels=pseudo is not None),
            prepared.bank_ref,
            tmp_path,
            name,
            cpus_per_worker=0.5,
            pseudo_ref=ray.put(pseudo) if pseudo is not None else None,
        )
        return load_predictions(trainer.fit().best_checkpoints[0][0].path)

    base, ignored, pulled = fit("base"), fit("zero", zero), fit("sure", sure)
    for v in test:
        np.testing.assert_allclose(ignored["test"][v], base["test"][v], atol=1e-3)
    mean_valence = lambda preds: np.mean([preds["test"][v][:, 0].mean() for v in test])  # noqa: E731
    assert mean_valence(pulled) > mean_valence(base) + 0.2
    assert mean_valence(pulled) > 0.5
