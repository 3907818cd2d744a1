"""The training loop a Ray Train worker runs (``train_epochs``), run here in one process with
no Ray: one trial on a small bank whose features carry the labels learns them, reports every
epoch with the official score of its own checkpointed predictions, ends on its last epoch, and
stops when its search says so. The fast tier's check of the loop; the slow tier runs the same
function on Ray Train workers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from abaw_ray.metrics import score_split
from abaw_ray.tasks import TRIAL_FINISHED
from abaw_ray.train.bank import FeatureBank
from abaw_ray.train.loop import TrialConfig, WorkerContext, load_predictions, train_epochs

SPLITS = {"train": ("a", "b", "c"), "selection": ("s",), "holdout": ("h",), "test": ("t",)}


def _bank(seed: int = 0) -> FeatureBank:
    """Videos of 120 frames whose 4 features are the valence-arousal labels plus noise (a
    quarter of each training video unlabelled, marked -5): a working loop learns them."""
    rng = np.random.default_rng(seed)
    labels, valid, frames = {}, {}, {}
    for v in (v for videos in SPLITS.values() for v in videos):
        t = np.linspace(0, 6, 120) + rng.uniform(0, 6)
        va = np.stack([np.sin(t), np.cos(1.3 * t)], 1).astype(np.float32) * 0.8
        frames[v] = np.concatenate([va, rng.normal(size=(120, 2))], 1).astype(np.float16)
        ok = np.ones(120, bool)
        if v in SPLITS["train"]:
            ok[90:] = False
        labels[v], valid[v] = np.where(ok[:, None], va, -5.0).astype(np.float32), ok
    return FeatureBank(
        task="va",
        keys=("f",),
        modality={"f": "visual"},
        splits=SPLITS,
        num_frames={v: 120 for v in labels},
        frames={"f": frames},
        native={},
        positions={},
        mean={"f": np.zeros(4, np.float32)},
        std={"f": np.ones(4, np.float32)},
        labels=labels,
        valid=valid,
        face_mask={v: np.ones(120, bool) for v in labels},
        dims={"f": 4},
    )


class Reports:
    """A plain process's report: the metrics, and the predictions of each checkpoint kept."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.checkpoints: dict[int, dict] = {}

    def __call__(self, metrics: dict[str, float], folder: Path | None) -> None:
        self.metrics.append(dict(metrics))
        if folder is not None:  # read now: the folder is gone once the report returns
            self.checkpoints[int(metrics["epoch"])] = load_predictions(folder)


def _context(reports: Reports, stop_after: int | None = None) -> WorkerContext:
    return WorkerContext(
        0,
        1,
        torch.device("cpu"),
        lambda model: model,
        None,
        reports,
        lambda: stop_after is not None and len(reports.metrics) >= stop_after,
    )


TRIAL = {"features": "f", "model": "frame_mlp", "hidden": 16, "layers": 1, "dropout": 0.0}
TRIAL |= {"window": 16, "stride": 8, "epochs": 4, "patience": 4, "lr": 1e-2, "batch_size": 8}


def test_one_trial_learns_reports_every_epoch_and_checkpoints_its_predictions():
    bank, reports = _bank(), Reports()
    train_epochs(TrialConfig.from_dict(TRIAL), bank, _context(reports))
    assert [m["epoch"] for m in reports.metrics] == [1, 2, 3, 4]
    assert [m[TRIAL_FINISHED] for m in reports.metrics] == [0.0, 0.0, 0.0, 1.0]
    best = max(reports.metrics, key=lambda m: m["val_ccc"])
    assert best["val_ccc"] > 0.6  # the features carry the labels
    assert reports.metrics[-1]["best_val_ccc"] == best["val_ccc"]
    # The epoch reported best was checkpointed; its score is the official one of its own
    # predictions of the selection videos; the held-out and test videos were predicted too.
    preds = reports.checkpoints[int(best["epoch"])]
    scored = score_split("va", preds["selection"], ["s"], bank.labels, bank.valid)
    assert best["val_ccc"] == pytest.approx(scored["ccc"], abs=1e-6)
    assert set(preds["holdout"]) == {"h"} and set(preds["test"]) == {"t"}
    assert all(p.shape == (120, 2) for split in preds.values() for p in split.values())


class SlowReports(Reports):
    """Reports that take ``seconds`` each: what checkpointing costs, made measurable."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, metrics: dict[str, float], folder: Path | None) -> None:
        super().__call__(metrics, folder)
        time.sleep(self.seconds)


def test_each_report_holds_the_seconds_spent_training_and_reporting_so_far():
    reports = SlowReports(0.2)
    timing = {"worker_started_at": 1.0e9, "time_fetch_s": 3.5}
    train_epochs(TrialConfig.from_dict(TRIAL), _bank(), _context(reports), timing=timing)
    m = reports.metrics
    assert all(r["worker_started_at"] == 1.0e9 and r["time_fetch_s"] == 3.5 for r in m)
    epochs = [r["time_epochs_s"] for r in m]
    assert all(0 < a < b for a, b in zip(epochs, epochs[1:]))  # cumulative, every epoch
    # An epoch's report counts the reports before it (its own is still running): 0.2 s each.
    reported = [r["time_checkpoint_s"] for r in m]
    assert reported[0] == 0.0
    assert all(b - a >= 0.2 for a, b in zip(reported, reported[1:])), reported


def test_the_control_learns_nothing_and_a_stopped_trial_stops():
    bank = _bank()
    control = Reports()
    train_epochs(TrialConfig.from_dict({**TRIAL, "shift_labels": True}), bank, _context(control))
    assert max(m["val_ccc"] for m in control.metrics) < 0.3
    stopped = Reports()
    train_epochs(TrialConfig.from_dict(TRIAL), bank, _context(stopped, stop_after=2))
    assert [m["epoch"] for m in stopped.metrics] == [1, 2]


def test_a_worker_its_node_lost_is_retried_and_an_error_of_the_training_code_is_not():
    """What decides a retry: a dead worker actor, or Train's health check failing to reach the
    worker (what a lost node gives, seen in the cluster test), is lost; an exception the
    training code raised is not. Ray Train's health-check classes are internal: this fails
    loudly when an upgrade moves or renames them."""
    import ray
    from ray.train.v2._internal.exceptions import (
        WorkerHealthCheckFailedError,
        WorkerHealthCheckTimeoutError,
    )

    from abaw_ray.train.trainer import UNREACHABLE_WORKER_ERRORS, lost_worker

    assert {WorkerHealthCheckFailedError.__name__, WorkerHealthCheckTimeoutError.__name__} == set(
        UNREACHABLE_WORKER_ERRORS
    )
    unreachable = WorkerHealthCheckFailedError(
        "health check failed", ray.exceptions.ActorUnavailableError("gone", None)
    )

    def group(failure: Exception) -> Exception:
        return ray.train.WorkerGroupError("training failed", {0: failure})

    assert lost_worker(group(unreachable))
    assert lost_worker(group(WorkerHealthCheckTimeoutError("no answer")))
    assert lost_worker(group(ray.exceptions.RayActorError()))
    assert not lost_worker(group(ValueError("hidden: -1 is not a size")))
