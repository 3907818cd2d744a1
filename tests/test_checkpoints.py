"""A trial's checkpoints as a search reads them back: files written atomically, and a corrupt
one (a truncated trial.json or predictions.npz, a disk that filled) named and skipped, never a
traceback that ends the search."""

from __future__ import annotations

import json

import numpy as np
import torch

from abaw_ray.train.loop import PREDICTIONS, TRIAL_JSON, TrialConfig, save_trial_checkpoint
from abaw_ray.tune.job import load_members
from abaw_ray.tune.search import TrialOutcome, best_checkpoint


def _checkpoint(folder, epoch: int, score: float) -> None:
    folder.mkdir(parents=True)
    model = torch.nn.Linear(2, 2)
    preds = {"selection": {"s": np.full((4, 2), score, np.float32)}, "holdout": {}, "test": {}}
    save_trial_checkpoint(
        folder,
        TrialConfig(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epoch,
        {"epoch": epoch + 1, "val_ccc": score},
        preds,
        [2],
    )


def test_a_corrupt_checkpoint_is_named_and_skipped(tmp_path):
    trainer = tmp_path / "train-abc"
    for i, score in enumerate([0.3, 0.6, 0.5]):
        _checkpoint(trainer / f"checkpoint_{i}", i, score)
    assert not list(trainer.rglob(".*partial*"))  # atomic writes leave nothing behind
    text = (trainer / "checkpoint_1" / TRIAL_JSON).read_text()
    (trainer / "checkpoint_1" / TRIAL_JSON).write_text(text[: len(text) // 2])  # truncated
    (trainer / "checkpoint_3").mkdir()  # being written when the search was killed: silent
    warnings: list[str] = []
    metrics, path = best_checkpoint(str(trainer), "val_ccc", warn=warnings.append)
    assert metrics["val_ccc"] == 0.5 and path.endswith("checkpoint_2")
    assert len(warnings) == 1 and "checkpoint_1/trial.json" in warnings[0]
    assert json.loads((trainer / "checkpoint_2" / TRIAL_JSON).read_text())["epoch"] == 2


def test_a_member_whose_predictions_are_corrupt_gives_way_to_the_next(tmp_path):
    outcomes = []
    for i, score in enumerate([0.9, 0.8, 0.7]):
        folder = tmp_path / f"t{i}" / "checkpoint_0"
        _checkpoint(folder, 0, score)
        outcomes.append(
            TrialOutcome(f"t{i}", {"model": "attention"}, "done", checkpoint=str(folder))
        )
    data = (tmp_path / "t0" / "checkpoint_0" / PREDICTIONS).read_bytes()
    (tmp_path / "t0" / "checkpoint_0" / PREDICTIONS).write_bytes(data[: len(data) // 2])
    warnings: list[str] = []
    members = load_members(outcomes, 2, warnings.append)
    assert [m.trial_id for m in members] == ["t1", "t2"]
    assert len(warnings) == 1 and "t0" in warnings[0]
