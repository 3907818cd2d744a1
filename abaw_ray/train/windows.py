"""Windows over a feature bank: training windows from the training videos only (balanced by
class on request), batches of the aligned, normalised features of a combination, and whole-video
prediction in overlapping chunks that are stitched back, so every frame of every timeline gets a
prediction and the metric is the official global one. Windows never cross a split, and indices
are integers end to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from abaw_ray.data.labels import shift_within_videos
from abaw_ray.tasks import KIND, Task, label_dtype, label_shape
from abaw_ray.train.bank import CONV_MARGIN, NATIVE, FeatureBank, variant_name


def training_windows(
    bank: FeatureBank, length: int, stride: int, valid: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """int64 [W, 2] rows of (index into the train videos, start frame) of the windows with a
    valid frame (by ``valid``, default the bank's). A video shorter than ``length`` gives one
    window (padded); the last window of a video ends at its last frame. ``bank``: a
    ``FeatureBank`` or anything with its ``splits``, ``num_frames`` and ``valid`` (fine-tune
    mode's ``FrameIndex``)."""
    valid = valid or bank.valid
    rows = []
    for i, v in enumerate(bank.splits["train"]):
        n = bank.num_frames[v]
        starts = list(range(0, max(n - length, 0) + 1, stride))
        if n > length and starts[-1] != n - length:
            starts.append(n - length)
        rows += [(i, s) for s in starts if valid[v][s : s + length].any()]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def balanced_window_weights(
    windows: np.ndarray,
    train_videos: Sequence[str],
    length: int,
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    num_classes: int,
) -> np.ndarray:
    """Class-balanced sampling probabilities of ``training_windows`` rows (EXPR): a window
    weighs the mean inverse training frequency of its valid frames' classes, so windows of
    rare classes are drawn about as often as those of common ones. Sums to 1."""
    counts = np.ones(num_classes)  # one pseudo-count: an absent class has a finite weight
    for v in train_videos:
        counts += np.bincount(labels[v][valid[v]], minlength=num_classes)[:num_classes]
    inverse = counts.sum() / counts
    weights = np.empty(len(windows))
    for row, (i, start) in enumerate(windows):
        v = train_videos[i]
        keep = valid[v][start : start + length]
        weights[row] = inverse[labels[v][start : start + length][keep]].mean()
    return weights / weights.sum()


def inference_chunks(num_frames: int, length: int) -> list[int]:
    """Starts of overlapping chunks (hop = length / 2) covering every frame."""
    if num_frames <= length:
        return [0]
    hop = max(1, length // 2)
    starts = list(range(0, num_frames - length + 1, hop))
    if starts[-1] != num_frames - length:
        starts.append(num_frames - length)
    return starts


@dataclass
class Batch:
    inputs: list[torch.Tensor]
    positions: list[torch.Tensor | None]
    target: torch.Tensor
    valid: torch.Tensor
    weight: torch.Tensor | None = None  # per frame (pseudo-labels' confidence); None: all 1
    # A multi-task trial's other tasks: {task: (target, valid)} on the same frames.
    others: dict[Task, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
        return Batch(
            [move(x) for x in self.inputs],
            [move(p) for p in self.positions],
            move(self.target),
            move(self.valid),
            move(self.weight),
            {t: (move(y), move(m)) for t, (y, m) in self.others.items()},
        )


Targets = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (labels, valid) per video


def window_targets(
    task: Task, targets: Targets, windows: Sequence[tuple[str, int]], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """``task``'s (labels, valid) of ``windows`` (video, start) of ``length`` frames: frames
    past a video's end, and videos without the task's labels, are invalid."""
    labels, valid = targets
    target = np.zeros((len(windows), *label_shape(task, length)), label_dtype(task))
    mask = np.zeros((len(windows), length), bool)
    for i, (v, s) in enumerate(windows):
        if v in labels:
            seg = labels[v][s : s + length]
            target[i, : len(seg)] = seg
            mask[i, : len(seg)] = valid[v][s : s + length]
    if KIND[task] == "multiclass":  # the -1 of unannotated frames is no class
        target = np.where(mask, target, 0)
    return target, mask


class WindowSampler:
    """Assembles batches of windows of a feature combination from the bank."""

    def __init__(
        self,
        bank: FeatureBank,
        keys: Sequence[str],
        alignment: str,
        length: int,
        labels: dict[str, np.ndarray] | None = None,
        valid: dict[str, np.ndarray] | None = None,
        weights: dict[str, np.ndarray] | None = None,
        video_norm: bool = False,
        others: dict[Task, Targets] | None = None,
    ) -> None:
        """``labels`` and ``valid`` replace the bank's training targets (the control, or
        pseudo-labels merged in); ``weights`` are per-frame loss weights (pseudo-labels);
        ``others`` are a multi-task trial's other tasks' (labels, valid), batched beside.
        ``video_norm``: frame-aligned features are standardised by their own video's mean and
        std (what removes a subject's resting face and the recording's conditions; offline
        recognition sees the whole video), instead of the training videos'."""
        missing = [k for k in keys if k not in bank.keys]
        if missing:
            raise KeyError(f"features {missing} are not in the bank ({bank.keys})")
        self.bank = bank
        self.keys = list(keys)
        self.length = length
        self.labels = labels or bank.labels
        self.valid = valid or bank.valid
        self.weights = weights
        self.others = dict(others or {})
        self.video_norm = video_norm
        self._video_stats: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.align = [
            ("conv" if alignment == "conv" and bank.modality[k] == "audio" else None) for k in keys
        ]
        frame_alignment = "interp" if alignment == "conv" else alignment
        self.variants = [
            variant_name(k, bank.modality[k] == "visual", frame_alignment) for k in keys
        ]

    @property
    def input_dims(self) -> list[int]:
        return [self.bank.dim(k) for k in self.keys]

    def _stats(self, variant: str, video: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.video_norm:
            return self.bank.mean[variant], self.bank.std[variant]
        if (variant, video) not in self._video_stats:
            whole = self.bank.frames[variant][video].astype(np.float32)
            # The global std keeps a near-constant column of one video from blowing up.
            std = np.maximum(whole.std(0), 0.1 * self.bank.std[variant])
            self._video_stats[variant, video] = (whole.mean(0), std)
        return self._video_stats[variant, video]

    def _frames(self, variant: str, video: str, start: int, length: int) -> np.ndarray:
        x = self.bank.frames[variant][video][start : start + length].astype(np.float32)
        mean, std = self._stats(variant, video)
        x = (x - mean) / std
        if len(x) < length:
            x = np.concatenate([x, np.zeros((length - len(x), x.shape[1]), np.float32)])
        return x

    def batch(self, windows: Sequence[tuple[str, int]], length: int | None = None) -> Batch:
        length = length or self.length
        inputs: list[torch.Tensor] = []
        positions: list[torch.Tensor | None] = []
        for key, variant, align in zip(self.keys, self.variants, self.align):
            if align == "conv":
                x, p = self._native(key, windows, length)
                inputs.append(x)
                positions.append(p)
            else:
                inputs.append(
                    torch.from_numpy(
                        np.stack([self._frames(variant, v, s, length) for v, s in windows])
                    )
                )
                positions.append(None)
        target, valid = window_targets(self.bank.task, (self.labels, self.valid), windows, length)
        weight = None
        if self.weights:
            weight = np.zeros((len(windows), length), np.float32)
            for i, (v, s) in enumerate(windows):
                if v in self.weights and v in self.labels:
                    seg = self.weights[v][s : s + length]
                    weight[i, : len(seg)] = seg
        others = {
            t: tuple(map(torch.from_numpy, window_targets(t, targets, windows, length)))
            for t, targets in self.others.items()
        }
        return Batch(
            inputs,
            positions,
            torch.from_numpy(target),
            torch.from_numpy(valid),
            None if weight is None else torch.from_numpy(weight),
            others,
        )

    def _native(
        self, key: str, windows: Sequence[tuple[str, int]], length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slices, rel = [], []
        for v, s in windows:
            pos = self.bank.positions[key][v][s : s + length]
            if len(pos) < length:
                pos = np.concatenate([pos, np.full(length - len(pos), pos[-1] if len(pos) else 0)])
            nat = self.bank.native[key][v]
            n0 = max(0, int(np.floor(pos.min())) - CONV_MARGIN)
            n1 = min(len(nat), int(np.ceil(pos.max())) + CONV_MARGIN + 1)
            native = variant_name(key, visual=False, alignment=NATIVE)
            x = (nat[n0:n1].astype(np.float32) - self.bank.mean[native]) / self.bank.std[native]
            slices.append(x)
            rel.append(pos - n0)
        width = max(len(x) for x in slices)
        out = np.zeros((len(slices), width, slices[0].shape[1]), np.float32)
        for i, x in enumerate(slices):
            out[i, : len(x)] = x
        return torch.from_numpy(out), torch.from_numpy(np.stack(rel).astype(np.float32))


def shifted_labels(
    bank: FeatureBank, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The control's training targets: the training videos' labels and masks shifted together
    (``shift_within_videos``); validation labels are untouched, so the control is scored
    honestly. ``bank``: a ``FeatureBank`` or anything with its ``labels``, ``valid`` and
    ``splits`` (fine-tune mode's ``FrameIndex``)."""
    return shift_within_videos(bank.labels, bank.valid, bank.splits["train"], seed)


def probabilities(task: Task, output: torch.Tensor) -> torch.Tensor:
    """A model's per-frame output as its predictions are stored: VA values as they are, EXPR
    logits softmaxed into class probabilities, AU logits into each unit's probability."""
    output = output.float()
    if KIND[task] == "multiclass":
        return output.softmax(-1)
    if KIND[task] == "multilabel":
        return torch.sigmoid(output)
    return output


@torch.no_grad()
def predict_videos(
    model: torch.nn.Module,
    sampler: WindowSampler,
    videos: Sequence[str],
    device: torch.device,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per-frame predictions over whole videos: overlapping chunks, averaged where they meet.
    VA: [T, 2] values; EXPR: [T, 8] class probabilities; AU: [T, 12] probabilities."""
    was_training = model.training
    model.eval()
    out: dict[str, np.ndarray] = {}
    for v in videos:
        n = sampler.bank.num_frames[v]
        starts = inference_chunks(n, sampler.length)
        acc = None
        count = np.zeros(n, np.float32)
        for b in range(0, len(starts), batch_size):
            group = starts[b : b + batch_size]
            batch = sampler.batch([(v, s) for s in group]).to(device)
            pred = probabilities(sampler.bank.task, model(batch.inputs, batch.positions)["pred"])
            pred = pred.cpu().numpy()
            if acc is None:
                acc = np.zeros((n, pred.shape[-1]), np.float32)
            for s, p in zip(group, pred):
                m = min(sampler.length, n - s)
                acc[s : s + m] += p[:m]
                count[s : s + m] += 1
        out[v] = acc / count[:, None]
    model.train(was_training)
    return out
