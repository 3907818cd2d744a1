"""One trial: the ``train_loop_per_worker`` of a Ray Train ``TorchTrainer``.

Builds the model, wraps it for data-parallel workers, shards the training windows per worker,
trains with AdamW, gradient clipping, the task loss plus the model's auxiliary loss, stops
early, and reports every epoch with ``ray.train.report``. The best epoch is checkpointed with
its per-frame validation and test predictions (what the ensemble reads).
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abaw_ray.data.labels import NUM_EXPR_CLASSES, Task
from abaw_ray.losses import ccc_loss, smoothed_cross_entropy, soft_macro_f1_loss
from abaw_ray.metrics import f1_per_class, macro_f1, va_scores
from abaw_ray.models import create_model
from abaw_ray.train.data import (
    FeatureBank,
    WindowSampler,
    predict_videos,
    shifted_labels,
    training_windows,
)

PRIMARY_METRIC: dict[str, str] = {"va": "val_ccc", "expr": "val_f1"}
MODEL_STATE = "model.pt"
PREDICTIONS = "predictions.npz"
TRIAL_JSON = "trial.json"


@dataclass(frozen=True)
class TrialConfig:
    """Every choice of one trial; what a search samples. Unknown keys are refused."""

    task: Task = "va"
    features: str = "face_hog+logmel"
    model: str = "attention"
    hidden: int = 64
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    window: int = 64
    stride: int = 32
    alignment: str = "interp"
    grad_clip: float = 1.0
    epochs: int = 20
    batch_size: int = 16
    patience: int = 6
    seed: int = 0
    # family-specific
    loss_weight: float = 0.1  # mctn: weight of translation + cycle losses
    gates: str = "paper"  # mfn: paper | reference
    layers: int = 2  # transformer / expr_transformer depth
    heads: int = 4
    teacher_forcing_epochs: int = 0  # mctn: epochs to decay teacher forcing to 0 (0: epochs/2)
    # expression task
    loss: str = "mix"  # expr: f1 | ce | mix
    f1_weight: float = 0.5
    label_smoothing: float = 0.1
    class_weights: bool = False
    # controls
    shuffle_labels: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialConfig:
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known - {"bank", "storage"})
        if extra:
            raise ValueError(f"unknown trial settings: {extra}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def feature_keys(self) -> list[str]:
        return [k for k in self.features.split("+") if k]

    def model_hparams(self) -> dict[str, Any]:
        return dict(
            hidden=self.hidden,
            dropout=self.dropout,
            loss_weight=self.loss_weight,
            gates=self.gates,
            layers=self.layers,
            heads=self.heads,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_loss(
    trial: TrialConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    class_weights: torch.Tensor | None,
) -> torch.Tensor:
    if trial.task == "va":
        return ccc_loss(pred, target, valid)
    ce = smoothed_cross_entropy(pred, target, valid, trial.label_smoothing, class_weights)
    if trial.loss == "ce":
        return ce
    f1 = soft_macro_f1_loss(pred, target, valid)
    if trial.loss == "f1":
        return f1
    return trial.f1_weight * f1 + (1 - trial.f1_weight) * ce


def score(bank: FeatureBank, preds: dict[str, np.ndarray], videos: list[str]) -> dict[str, float]:
    """The official global score over every valid frame of ``videos`` concatenated."""
    p = np.concatenate([preds[v] for v in videos])
    t = np.concatenate([bank.labels[v] for v in videos])
    m = np.concatenate([bank.valid[v] for v in videos])
    if bank.task == "va":
        s = va_scores(p, t, m)
        return {
            "val_ccc": s["mean"],
            "val_ccc_valence": s["valence"],
            "val_ccc_arousal": s["arousal"],
        }
    cls = p.argmax(-1)
    per_class = f1_per_class(cls, t, NUM_EXPR_CLASSES, m)
    out = {"val_f1": macro_f1(cls, t, NUM_EXPR_CLASSES, m)}
    out.update({f"val_f1_class{c}": float(np.nan_to_num(f)) for c, f in enumerate(per_class)})
    return out


def _class_weights(bank: FeatureBank) -> torch.Tensor:
    t = np.concatenate([bank.labels[v][bank.valid[v]] for v in bank.splits["train"]])
    counts = np.bincount(t, minlength=NUM_EXPR_CLASSES).astype(np.float64) + 1.0
    w = counts.sum() / (NUM_EXPR_CLASSES * counts)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def save_trial_checkpoint(
    folder: Path,
    trial: TrialConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    metrics: dict[str, float],
    val_preds: dict[str, np.ndarray],
    test_preds: dict[str, np.ndarray],
    input_dims: list[int],
) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
        folder / MODEL_STATE,
    )
    np.savez_compressed(
        folder / PREDICTIONS,
        **{f"val/{v}": p for v, p in val_preds.items()},
        **{f"test/{v}": p for v, p in test_preds.items()},
    )
    (folder / TRIAL_JSON).write_text(
        json.dumps(
            {"trial": asdict(trial), "epoch": epoch, "metrics": metrics, "input_dims": input_dims},
            indent=1,
        )
    )


def load_predictions(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{"val": {video: array}, "test": {...}}`` from a trial checkpoint folder."""
    data = np.load(Path(folder) / PREDICTIONS)
    out: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    for name in data.files:
        split, video = name.split("/", 1)
        out[split][video] = data[name]
    return out


def restore_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, metric: str
) -> tuple[int, float, int]:
    """(start epoch, best score, best epoch): from the run's checkpoint when Ray Train retries
    a failed worker group or resumes a run (it resumes from the best epoch), else fresh."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, -math.inf, -1
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / MODEL_STATE, map_location=device, weights_only=False)
        saved = json.loads((Path(d) / TRIAL_JSON).read_text())
    (model.module if hasattr(model, "module") else model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, saved["metrics"][metric], state["epoch"]


def report_epoch(metrics: dict[str, float], checkpoint: bool, save: Callable[[Path], None]) -> None:
    """``ray.train.report`` the epoch; with ``checkpoint`` (rank 0, a new best) ``save``
    fills a folder that becomes the epoch's checkpoint."""
    import ray.train

    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    trial = TrialConfig.from_dict(config)
    bank: FeatureBank = ray.get(config["bank"][0])  # once per node: zero-copy numpy views
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(trial.seed)
    device = ray.train.torch.get_device()

    keys = trial.feature_keys
    labels = shifted_labels(bank, trial.seed) if trial.shuffle_labels else None
    sampler = WindowSampler(bank, keys, trial.alignment, trial.window, labels)
    model = create_model(
        trial.model, sampler.input_dims, trial.task, align=sampler.align, **trial.model_hparams()
    )
    core = model.core
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr, weight_decay=trial.weight_decay)
    class_weights = _class_weights(bank).to(device) if trial.class_weights else None
    metric = PRIMARY_METRIC[trial.task]
    start_epoch, best, best_epoch = restore_checkpoint(model, optimizer, device, metric)

    windows = training_windows(bank, trial.window, trial.stride)
    train_videos = bank.splits["train"]
    plain = model.module if hasattr(model, "module") else model
    tf_epochs = trial.teacher_forcing_epochs or max(1, trial.epochs // 2)
    for epoch in range(start_epoch, trial.epochs):
        if hasattr(core, "teacher_forcing"):
            core.teacher_forcing = max(0.0, 1.0 - epoch / tf_epochs)
        order = np.random.default_rng([trial.seed, epoch]).permutation(len(windows))
        # Every worker takes the same number of steps (DDP all-reduces each one).
        per_worker = len(order) // world if world > 1 else len(order)
        mine = order[rank * per_worker : (rank + 1) * per_worker] if world > 1 else order
        model.train()
        losses, aux_losses = [], []
        for b in range(0, len(mine), trial.batch_size):
            idx = windows[mine[b : b + trial.batch_size]]
            batch = sampler.batch([(train_videos[i], int(s)) for i, s in idx]).to(device)
            out = model(batch.inputs, batch.positions)
            loss = task_loss(trial, out["pred"], batch.target, batch.valid, class_weights)
            total = loss + out["aux_loss"]
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if trial.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), trial.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            aux_losses.append(float(out["aux_loss"].detach()))

        val_videos = list(bank.splits["val"])
        val_preds = predict_videos(plain, sampler, val_videos, device)
        metrics = {
            "epoch": epoch + 1,  # 1-based: what ASHA counts
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "aux_loss": float(np.mean(aux_losses)) if aux_losses else 0.0,
            **score(bank, val_preds, val_videos),
        }
        if getattr(core, "last_losses", None):
            metrics.update({f"train_{k}_loss": v for k, v in core.last_losses.items()})
        improved = metrics[metric] > best
        if improved:
            best, best_epoch = metrics[metric], epoch
        metrics[f"best_{metric}"] = best
        report_epoch(
            metrics,
            improved and rank == 0,
            lambda folder, epoch=epoch, metrics=metrics, val_preds=val_preds: save_trial_checkpoint(
                folder,
                trial,
                plain,
                optimizer,
                epoch,
                metrics,
                val_preds,
                predict_videos(plain, sampler, list(bank.splits["test"]), device),
                sampler.input_dims,
            ),
        )
        if epoch - best_epoch >= trial.patience:
            break
