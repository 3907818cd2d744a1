"""``finetune`` mode: the image backbone trained end to end with the sequence head.

Ray Data reads and augments the face images of every training window (random flip, brightness
and contrast jitter, a random crop resized back) and streams them to the Ray Train workers'
dataset shards; each epoch re-runs the pipeline, so augmentations differ per epoch. Frames
without a face take the nearest face. Validation and test predict whole videos from their
images, exactly as ``frozen`` mode does from stored features, so checkpoints, ensembles and
submissions are the same for both modes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

from abaw_ray.data.corpus import Corpus
from abaw_ray.data.labels import Task
from abaw_ray.data.timeline import nearest_available
from abaw_ray.features.pipeline import decode_faces
from abaw_ray.features.registry import create_extractor
from abaw_ray.models import create_model
from abaw_ray.train.data import inference_chunks
from abaw_ray.train.loop import (
    PRIMARY_METRIC,
    TrialConfig,
    report_epoch,
    restore_checkpoint,
    save_trial_checkpoint,
    score,
    seed_everything,
    task_loss,
)


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Where each frame's face image is (the nearest face for frames without one), with the
    labels and splits: everything a fine-tuning worker needs, small enough to ship once."""

    task: Task
    splits: dict[str, tuple[str, ...]]
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
        return [f"{self.face_dir[video]}/{int(k):0{w}d}.jpg" for k in frames]


def build_frame_index(corpus: Corpus, task: Task) -> FrameIndex:
    splits = {
        s: tuple(v for v in corpus.split_videos(task, s) if corpus.videos[v].face_dir is not None)
        for s in ("train", "val", "test")
    }
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


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random flip / photometric jitter / crop per window, the same for all its frames
    (a face should not flicker between augmentations inside a sequence)."""
    x = images.astype(np.float32)
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    x = (x - x.mean()) * rng.uniform(0.8, 1.2) + x.mean() + rng.uniform(-20, 20)
    size = x.shape[1]
    crop = int(size * rng.uniform(0.85, 1.0))
    y0, x0 = rng.integers(0, size - crop + 1, 2)
    x = np.clip(x, 0, 255).astype(np.uint8)[:, y0 : y0 + crop, x0 : x0 + crop]
    if crop != size:
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
        t = torch.nn.functional.interpolate(
            t, size=(size, size), mode="bilinear", align_corners=False
        )
        x = t.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()
    return x


class DecodeWindows:
    """Ray Data callable: window rows -> augmented face images and labels."""

    def __init__(self, index_ref: list[ray.ObjectRef], length: int, seed: int) -> None:
        self.index: FrameIndex = ray.get(index_ref[0])
        self.length = length
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames, targets, valid = [], [], []
        for video, start in zip(batch["video"], batch["start"]):
            s = int(start)
            paths = self.index.paths(video, s, self.length)
            images = decode_faces({"path": np.array(paths)})["image"]
            frames.append(augment(images, self.rng))
            lab = self.index.labels[video][s : s + self.length]
            val = self.index.valid[video][s : s + self.length]
            pad = self.length - len(lab)
            targets.append(np.concatenate([lab, np.zeros((pad, *lab.shape[1:]), lab.dtype)]))
            valid.append(np.concatenate([val, np.zeros(pad, bool)]))
        target = np.stack(targets)
        if self.index.task == "expr":
            target = np.where(np.stack(valid), target, 0)
        return {"frames": np.stack(frames), "target": target, "valid": np.stack(valid)}


def window_dataset(
    index: FrameIndex, index_ref: ray.ObjectRef, length: int, stride: int, seed: int
) -> ray.data.Dataset:
    rows = []
    for v in index.splits["train"]:
        n = index.num_frames[v]
        starts = list(range(0, max(n - length, 0) + 1, stride))
        rows += [{"video": v, "start": s} for s in starts if index.valid[v][s : s + length].any()]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // 8))
    return ds.map_batches(
        DecodeWindows,
        fn_constructor_kwargs=dict(index_ref=[index_ref], length=length, seed=seed),
        batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.5,
    )


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
            pred = model(torch.from_numpy(images)[None].to(device))["pred"].float()
            if index.task == "expr":
                pred = pred.softmax(-1)
            pred = pred[0].cpu().numpy()
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
    index: FrameIndex = ray.get(config["bank"][0])
    seed_everything(trial.seed)
    device = ray.train.torch.get_device()
    backbone = trial.feature_keys[0]
    name, _, suffix = backbone.partition(".")
    model = BackboneSequenceModel(
        name, suffix == "tiny", trial.model, trial.task, trial.model_hparams()
    )
    plain = model
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr, weight_decay=trial.weight_decay)
    metric = PRIMARY_METRIC[trial.task]
    start_epoch, best, best_epoch = restore_checkpoint(plain, optimizer, device, metric)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, trial.epochs):
        model.train()
        losses = []
        for batch in shard.iter_torch_batches(
            batch_size=trial.batch_size,
            device=device,
            local_shuffle_buffer_size=4 * trial.batch_size,
        ):
            out = model(batch["frames"])
            loss = task_loss(trial, out["pred"], batch["target"], batch["valid"], None)
            optimizer.zero_grad(set_to_none=True)
            (loss + out["aux_loss"]).backward()
            if trial.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), trial.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        val_videos = list(index.splits["val"])
        val_preds = predict_from_images(plain, index, val_videos, trial.window, device)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            **score(index, val_preds, val_videos),
        }
        improved = metrics[metric] > best
        if improved:
            best, best_epoch = metrics[metric], epoch
        metrics[f"best_{metric}"] = best
        rank0 = ray.train.get_context().get_world_rank() == 0
        report_epoch(
            metrics,
            improved and rank0,
            lambda folder, epoch=epoch, metrics=metrics, val_preds=val_preds: save_trial_checkpoint(
                folder,
                trial,
                plain,
                optimizer,
                epoch,
                metrics,
                val_preds,
                predict_from_images(plain, index, list(index.splits["test"]), trial.window, device),
                [],
            ),
        )
        if epoch - best_epoch >= trial.patience:
            break


def build_finetune_trainer(
    trial: TrialConfig,
    index: FrameIndex,
    storage_path: str | Path,
    name: str,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    index_ref = ray.put(index)
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    return TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config={**asdict(trial), "bank": [index_ref]},
        datasets={
            "train": window_dataset(index, index_ref, trial.window, trial.stride, trial.seed)
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=PRIMARY_METRIC[trial.task],
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=2),
        ),
    )
