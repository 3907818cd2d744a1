"""``finetune`` mode: the image backbone trained end to end with the sequence head.

Every epoch the training windows are put in one global order drawn from (trial seed, epoch),
across videos, and each Ray Train worker takes its equal slice of it, as ``frozen`` mode does.
A Ray Data pipeline over the worker's rows reads and augments each window's face images
(random flip, brightness and contrast jitter, a random crop resized back) with a generator
seeded by (trial seed, epoch, window): augmentations differ between epochs and a rerun or a
restored trial sees the same ones. Frames without a face take the nearest face. Validation,
held-out and test videos are predicted whole from their images, exactly as ``frozen`` mode does
from stored features, so checkpoints, ensembles and submissions are the same for both modes.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

from abaw_ray import tracking
from abaw_ray.affwild2 import face_image_name
from abaw_ray.data.corpus import Corpus
from abaw_ray.data.timeline import nearest_available
from abaw_ray.features.pipeline import decode_faces
from abaw_ray.features.registry import create_extractor
from abaw_ray.models import create_model
from abaw_ray.tasks import PRIMARY_METRIC, TRIAL_FINISHED, Task
from abaw_ray.train.bank import BANK_SPLITS, draw_holdout
from abaw_ray.train.loop import (
    TrialConfig,
    last_epoch,
    resume_point,
    save_trial_checkpoint,
    seed_everything,
    stop_requested,
    task_loss,
    trial_class_weights,
    validation_metrics,
)
from abaw_ray.train.windows import (
    inference_chunks,
    probabilities,
    shifted_labels,
    training_windows,
)

DECODE_BATCH = 4  # windows per Ray Data decode call


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Where each frame's face image is (the nearest face for frames without one), with the
    labels and splits: everything a fine-tuning worker needs, small enough to ship once."""

    task: Task
    splits: dict[str, tuple[str, ...]]  # train, val (selection), holdout, test
    num_frames: dict[str, int]
    face_dir: dict[str, str]
    source_frame: dict[str, np.ndarray]  # 1-based face image shown for each timeline frame
    width: dict[str, int]
    labels: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    face_mask: dict[str, np.ndarray]

    def paths(self, video: str, start: int, length: int) -> list[str]:
        frames = self.source_frame[video][start : start + length]
        if len(frames) < length:
            frames = np.concatenate([frames, np.full(length - len(frames), frames[-1])])
        w = self.width[video]
        return [f"{self.face_dir[video]}/{face_image_name(k, w)}" for k in frames]


def build_frame_index(
    corpus: Corpus, task: Task, holdout: float = 0.0, seed: int = 0
) -> FrameIndex:
    """The videos with face images of the task's splits; ``holdout`` and ``seed`` split the
    validation videos into selection (``val``) and ``holdout`` videos (``draw_holdout``)."""
    splits = {
        s: tuple(v for v in corpus.split_videos(task, s) if corpus.videos[v].face_dir is not None)
        for s in ("train", "val", "test")
    }
    if not splits["train"] or not splits["val"]:
        raise ValueError(f"the corpus has no {task.upper()} training or validation face videos")
    splits["selection"], splits["holdout"] = draw_holdout(
        corpus, task, splits.pop("val"), holdout, seed
    )
    splits = {s: splits[s] for s in BANK_SPLITS}
    out: dict[str, dict[str, Any]] = {k: {} for k in ("n", "dir", "src", "w", "lab", "val", "mask")}
    for v in (v for s in splits.values() for v in s):
        video = corpus.videos[v]
        n = corpus.num_frames(v)
        mask = video.face_mask(n)
        out["n"][v], out["dir"][v], out["w"][v] = n, str(video.face_dir), video.face_name_width
        out["mask"][v] = mask
        out["src"][v] = (
            nearest_available(np.arange(n), mask) + 1 if mask.any() else np.ones(n, np.int64)
        )
        if v in corpus.labels[task]:
            lab = corpus.labels_on_timeline(task, v)
            out["lab"][v], out["val"][v] = lab.values, lab.valid
    return FrameIndex(
        task,
        splits,
        out["n"],
        out["dir"],
        out["src"],
        out["w"],
        out["lab"],
        out["val"],
        out["mask"],
    )


def epoch_windows(
    index: FrameIndex, windows: np.ndarray, seed: int, epoch: int
) -> list[dict[str, Any]]:
    """The epoch's training rows (``window``, ``video``, ``start``, ``epoch``) in one global
    order across videos, drawn from (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(windows))
    videos = index.splits["train"]
    return [
        {
            "window": int(w),
            "video": videos[windows[w, 0]],
            "start": int(windows[w, 1]),
            "epoch": epoch,
        }
        for w in order
    ]


def window_rng(seed: int, epoch: int, window: int) -> np.random.Generator:
    """The augmentation generator of one training window in one epoch."""
    return np.random.default_rng([seed, epoch, window])


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 [T, S, S, C] images to [T, size, size, C] (half-pixel centres,
    as ``interpolate(..., align_corners=False)``), in plain numpy: the same pixels whatever
    process or thread count computes them (torch's kernels differ by a level across threads)."""
    scale = images.shape[1] / size
    src = np.maximum((np.arange(size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, images.shape[1] - 1)
    w = (src - i0).astype(np.float32)
    x = images.astype(np.float32)
    x = x[:, i0] * (1 - w)[:, None, None] + x[:, i1] * w[:, None, None]
    x = x[:, :, i0] * (1 - w)[:, None] + x[:, :, i1] * w[:, None]
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random flip / photometric jitter / crop per window, the same for all its frames
    (a face should not flicker between augmentations inside a sequence). Deterministic given
    the generator's state."""
    x = images.astype(np.float32)
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    x = (x - x.mean()) * rng.uniform(0.8, 1.2) + x.mean() + rng.uniform(-20, 20)
    size = x.shape[1]
    crop = int(size * rng.uniform(0.85, 1.0))
    y0, x0 = rng.integers(0, size - crop + 1, 2)
    x = np.clip(x, 0, 255).astype(np.uint8)[:, y0 : y0 + crop, x0 : x0 + crop]
    return resize_square(x, size) if crop != size else np.ascontiguousarray(x)


class DecodeWindows:
    """Ray Data callable: rows of ``epoch_windows`` -> augmented face images and labels. Each
    window is augmented by ``window_rng(seed, epoch, window)``, whatever batch or actor it
    lands in. ``index`` is the FrameIndex, or a list holding its object reference."""

    def __init__(self, index: FrameIndex | list[ray.ObjectRef], length: int, seed: int) -> None:
        self.index: FrameIndex = index if isinstance(index, FrameIndex) else ray.get(index[0])
        self.length = length
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames, targets, valid = [], [], []
        rows = zip(batch["video"], batch["start"], batch["window"], batch["epoch"])
        for video, start, window, epoch in rows:
            s = int(start)
            paths = self.index.paths(video, s, self.length)
            images = decode_faces({"path": np.array(paths)})["image"]
            frames.append(augment(images, window_rng(self.seed, int(epoch), int(window))))
            lab = self.index.labels[video][s : s + self.length]
            val = self.index.valid[video][s : s + self.length]
            pad = self.length - len(lab)
            targets.append(np.concatenate([lab, np.zeros((pad, *lab.shape[1:]), lab.dtype)]))
            valid.append(np.concatenate([val, np.zeros(pad, bool)]))
        target = np.stack(targets)
        if self.index.task == "expr":
            target = np.where(np.stack(valid), target, 0)
        return {"frames": np.stack(frames), "target": target, "valid": np.stack(valid)}


def epoch_dataset(
    rows: Sequence[dict[str, Any]], index_ref: ray.ObjectRef, length: int, seed: int
) -> ray.data.Dataset:
    """Ray Data reads and augments the windows of ``rows``, keeping their order."""
    ds = ray.data.from_items(list(rows), override_num_blocks=max(1, len(rows) // 8))
    ds.context.execution_options.preserve_order = True
    return ds.map_batches(
        DecodeWindows,
        fn_constructor_kwargs=dict(index=[index_ref], length=length, seed=seed),
        batch_size=DECODE_BATCH,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )


def make_loss(
    trial: TrialConfig, index: FrameIndex, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trial's loss of (pred, target, valid), with the class weights of the training
    frames when ``trial.class_weights`` asks for them (EXPR)."""
    weights = trial_class_weights(trial, index.labels, index.valid, index.splits["train"])
    if weights is not None:
        weights = weights.to(device)
    return lambda pred, target, valid: task_loss(trial, pred, target, valid, weights)


class BackboneSequenceModel(nn.Module):
    """Backbone (per frame) -> the sequence model of ``model`` -> per-frame outputs."""

    def __init__(
        self,
        backbone: str,
        tiny: bool,
        model: str,
        task: Task,
        hparams: dict[str, Any],
        weights_dir: str | None = None,
    ) -> None:
        super().__init__()
        ex = create_extractor(backbone, tiny=tiny, weights_dir=weights_dir)
        self.backbone = ex.module
        self.size = ex.input_size or ex.spec.input_size
        self.register_buffer("mean", torch.tensor(ex.spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(ex.spec.std).view(1, 3, 1, 1))
        self.head = create_model(model, [ex.dim], task, **hparams)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.size:
            x = nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
        feats = self.backbone((x - self.mean) / self.std).reshape(b, t, -1)
        return self.head([feats])


@torch.no_grad()
def predict_from_images(
    model: nn.Module, index: FrameIndex, videos: list[str], length: int, device: torch.device
) -> dict[str, np.ndarray]:
    was = model.training
    model.eval()
    out = {}
    for v in videos:
        n = index.num_frames[v]
        acc, count = None, np.zeros(n, np.float32)
        for s in inference_chunks(n, length):
            images = decode_faces({"path": np.array(index.paths(v, s, length))})["image"]
            pred = model(torch.from_numpy(images)[None].to(device))["pred"]
            pred = probabilities(index.task, pred)[0].cpu().numpy()
            if acc is None:
                acc = np.zeros((n, pred.shape[-1]), np.float32)
            m = min(length, n - s)
            acc[s : s + m] += pred[:m]
            count[s : s + m] += 1
        out[v] = acc / count[:, None]
    model.train(was)
    return out


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    trial = TrialConfig.from_dict(config)
    index_ref = config["bank"][0]
    index: FrameIndex = ray.get(index_ref)
    if trial.shift_labels:  # the control: training labels and masks shifted together
        labels, valid = shifted_labels(index, trial.seed)
        index = replace(index, labels=labels, valid=valid)
        index_ref = ray.put(index)  # what the decode actors read
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(trial.seed)
    device = ray.train.torch.get_device()
    name, _, suffix = trial.feature_keys[0].partition(".")
    model = BackboneSequenceModel(name, suffix == "tiny", trial.model, trial.task, trial.model_args)
    plain = model
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr, weight_decay=trial.weight_decay)
    loss_fn = make_loss(trial, index, device)
    metric = PRIMARY_METRIC[trial.task]

    # Ray Train hands back the latest (best) checkpoint when it retries a failed worker group
    # or resumes a run: continue after that epoch.
    checkpoint = ray.train.get_checkpoint()
    start_epoch, best, best_epoch = resume_point(checkpoint, plain, optimizer, metric, device)

    windows = training_windows(index, trial.window, trial.window_stride)
    val_videos = list(index.splits["selection"])
    for epoch in range(start_epoch, trial.epochs):
        if stop_requested(config):
            break
        rows = epoch_windows(index, windows, trial.seed, epoch)
        # Every worker takes the same number of steps (DDP all-reduces each one).
        per_worker = len(rows) // world
        mine = rows[rank * per_worker : (rank + 1) * per_worker]
        model.train()
        losses, aux_losses = [], []
        for batch in epoch_dataset(mine, index_ref, trial.window, trial.seed).iter_torch_batches(
            batch_size=trial.batch_size, device=device
        ):
            out = model(batch["frames"])
            loss = loss_fn(out["pred"], batch["target"], batch["valid"])
            optimizer.zero_grad(set_to_none=True)
            (loss + out["aux_loss"]).backward()
            if trial.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), trial.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            aux_losses.append(float(out["aux_loss"].detach()))

        val_preds = predict_from_images(plain, index, val_videos, trial.window, device)
        metrics = {
            "epoch": epoch + 1,  # 1-based: what ASHA counts
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "aux_loss": float(np.mean(aux_losses)) if aux_losses else 0.0,
            **validation_metrics(trial.task, val_preds, val_videos, index.labels, index.valid),
        }
        improved = metrics[metric] > best
        if improved:
            best, best_epoch = metrics[metric], epoch
        metrics[f"best_{metric}"] = best
        metrics[TRIAL_FINISHED] = last_epoch(trial, epoch, best_epoch)
        if stop_requested(config):  # stopped while this epoch ran: report nothing of it
            break
        if improved and rank == 0:
            predictions = {
                "selection": val_preds,
                **{
                    split: predict_from_images(
                        plain, index, list(index.splits[split]), trial.window, device
                    )
                    for split in ("holdout", "test")
                },
            }
            with tempfile.TemporaryDirectory() as tmp:
                save_trial_checkpoint(
                    Path(tmp), trial, plain, optimizer, epoch, metrics, predictions, []
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if config.get("epoch_relay") and rank == 0:  # a single trial's own MLflow run
            tracking.log_epoch(config["epoch_relay"], metrics, epoch + 1)
        if metrics[TRIAL_FINISHED]:
            break
