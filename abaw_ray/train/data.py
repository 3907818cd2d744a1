"""What a trial trains on: a feature bank (every stored feature on the frame timeline, built
once per search and put in the object store) and windows over it.

Training windows come from training videos only; validation and test run over whole videos in
overlapping chunks that are stitched back, so every frame of every timeline gets a prediction
and the metric is the official global one. Windows never cross a split, and indices are
integers end to end.

The validation videos are split in two: ``splits["val"]``, on which everything is selected
(best epoch, search, ensemble), and ``splits["holdout"]``, which nothing selects on and which
is scored once at the end (``split_holdout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from abaw_ray.data.corpus import Corpus
from abaw_ray.data.labels import shift_within_videos
from abaw_ray.features.align import frame_features
from abaw_ray.features.store import FeatureStore
from abaw_ray.tasks import Task

ALIGNMENTS = ("interp", "pool", "conv")
SPLITS = ("train", "val", "holdout", "test")
CONV_MARGIN = 4  # native frames kept either side of a window for the conv's receptive field


@dataclass(frozen=True, eq=False)
class FeatureBank:
    """Features of every video for a set of store keys, labels and splits, as plain numpy
    arrays (shared zero-copy through Ray's object store).

    ``frames[variant][video]``: float16 [T, D] on the frame timeline, where ``variant`` is a
    visual key, or ``"<audio key>|interp"`` / ``"|pool"``. ``native[key][video]``: float16
    [N, D] audio at its own rate, with ``positions[key][video]``: float32 [T] the fractional
    native index of each frame's centre (for the learned ``conv`` alignment).
    """

    task: Task
    keys: tuple[str, ...]
    modality: dict[str, str]
    splits: dict[str, tuple[str, ...]]
    num_frames: dict[str, int]
    frames: dict[str, dict[str, np.ndarray]]
    native: dict[str, dict[str, np.ndarray]]
    positions: dict[str, dict[str, np.ndarray]]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    face_mask: dict[str, np.ndarray]
    fps: dict[str, float] = field(default_factory=dict)

    def variant(self, key: str, alignment: str) -> str:
        return key if self.modality[key] == "visual" else f"{key}|{alignment}"

    def dim(self, key: str) -> int:
        if self.modality[key] == "visual":
            return int(self.mean[key].shape[0])
        return int(self.mean[f"{key}|interp"].shape[0])


def split_holdout(
    videos: Sequence[str], holdout: float, seed: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selection videos, held-out videos). ``holdout`` is a fraction of the videos (0 < h < 1,
    at least one video, and at least one left to select on) or a whole number of videos;
    0 holds nothing out. The draw is seeded and does not depend on the order given."""
    ordered = sorted(videos)
    if holdout <= 0:
        return tuple(ordered), ()
    count = int(holdout) if holdout >= 1 else max(1, round(holdout * len(ordered)))
    if count >= len(ordered):
        raise ValueError(
            f"holdout {holdout} leaves no validation video to select on ({len(ordered)} in all)"
        )
    held = set(np.random.default_rng(seed).choice(ordered, size=count, replace=False).tolist())
    return tuple(v for v in ordered if v not in held), tuple(v for v in ordered if v in held)


def build_bank(
    corpus: Corpus,
    store: FeatureStore,
    keys: Sequence[str],
    task: Task,
    alignments: Sequence[str] = ALIGNMENTS,
    holdout: float = 0.0,
    seed: int = 0,
) -> FeatureBank:
    """Load ``keys`` from the store for every video of the task's splits; ``holdout`` and
    ``seed`` split the validation videos (``split_holdout``)."""
    splits = {s: tuple(corpus.split_videos(task, s)) for s in ("train", "val", "test")}
    if not splits["train"] or not splits["val"]:
        raise ValueError(f"the corpus has no {task.upper()} training or validation videos")
    splits["val"], splits["holdout"] = split_holdout(splits["val"], holdout, seed)
    videos = [v for s in SPLITS for v in splits[s]]
    modality = {k: store.manifest(k).get("modality") for k in keys}
    for k, m in modality.items():
        if m is None:
            raise FileNotFoundError(f"{store.dir(k)}: no features extracted for {k}")
    frames: dict[str, dict[str, np.ndarray]] = {}
    native: dict[str, dict[str, np.ndarray]] = {}
    positions: dict[str, dict[str, np.ndarray]] = {}
    for k in keys:
        if modality[k] == "visual":
            frames[k] = {
                v: frame_features(store, k, corpus, v)[0].astype(np.float16) for v in videos
            }
            continue
        for method in ("interp", "pool"):
            if method in alignments or "conv" in alignments:
                frames[f"{k}|{method}"] = {
                    v: frame_features(store, k, corpus, v, method)[0].astype(np.float16)
                    for v in videos
                }
        if "conv" in alignments:
            native[k], positions[k] = {}, {}
            for v in videos:
                try:
                    stored = store.load(k, v)
                except FileNotFoundError:
                    stored = None
                t = corpus.frame_times(v)
                centres = t + 0.5 / corpus.videos[v].fps
                if stored is None or len(stored.times) == 0:
                    native[k][v] = np.zeros((1, store.manifest(k)["dim"]), np.float16)
                    positions[k][v] = np.zeros(len(t), np.float32)
                else:
                    native[k][v] = np.asarray(stored.values, np.float16)
                    idx = np.arange(len(stored.times), dtype=np.float64)
                    positions[k][v] = np.interp(centres, stored.times, idx).astype(np.float32)
    mean, std = {}, {}
    for variant, per_video in frames.items():
        x = np.concatenate([per_video[v] for v in splits["train"]]).astype(np.float32)
        mean[variant], std[variant] = x.mean(0), x.std(0) + 1e-5
    for k, per_video in native.items():
        x = np.concatenate([per_video[v] for v in splits["train"]]).astype(np.float32)
        mean[f"{k}|native"], std[f"{k}|native"] = x.mean(0), x.std(0) + 1e-5
    labels, valid, faces, num_frames, fps = {}, {}, {}, {}, {}
    for v in videos:
        n = corpus.num_frames(v)
        num_frames[v] = n
        fps[v] = float(corpus.videos[v].fps or 30.0)
        faces[v] = corpus.videos[v].face_mask(n)
        if v in corpus.labels[task]:
            lab = corpus.labels_on_timeline(task, v)
            labels[v], valid[v] = lab.values, lab.valid
    return FeatureBank(
        task,
        tuple(keys),
        modality,
        splits,
        num_frames,
        frames,
        native,
        positions,
        mean,
        std,
        labels,
        valid,
        faces,
        fps,
    )


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

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
        return Batch(
            [move(x) for x in self.inputs],
            [move(p) for p in self.positions],
            move(self.target),
            move(self.valid),
        )


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
    ) -> None:
        """``labels`` and ``valid`` replace the bank's training targets (the control)."""
        missing = [k for k in keys if k not in bank.keys]
        if missing:
            raise KeyError(f"features {missing} are not in the bank ({bank.keys})")
        self.bank = bank
        self.keys = list(keys)
        self.length = length
        self.labels = labels or bank.labels
        self.valid = valid or bank.valid
        self.align = [
            ("conv" if alignment == "conv" and bank.modality[k] == "audio" else None) for k in keys
        ]
        frame_alignment = "interp" if alignment == "conv" else alignment
        self.variants = [bank.variant(k, frame_alignment) for k in keys]

    @property
    def input_dims(self) -> list[int]:
        return [self.bank.dim(k) for k in self.keys]

    def _frames(self, variant: str, video: str, start: int, length: int) -> np.ndarray:
        x = self.bank.frames[variant][video][start : start + length].astype(np.float32)
        x = (x - self.bank.mean[variant]) / self.bank.std[variant]
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
        task = self.bank.task
        shape = (length, 2) if task == "va" else (length,)
        target = np.zeros((len(windows), *shape), np.float32 if task == "va" else np.int64)
        valid = np.zeros((len(windows), length), bool)
        for i, (v, s) in enumerate(windows):
            if v in self.labels:
                seg = self.labels[v][s : s + length]
                target[i, : len(seg)] = seg
                valid[i, : len(seg)] = self.valid[v][s : s + length]
        if task == "expr":
            target = np.where(valid, target, 0)
        return Batch(inputs, positions, torch.from_numpy(target), torch.from_numpy(valid))

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
            x = (nat[n0:n1].astype(np.float32) - self.bank.mean[f"{key}|native"]) / self.bank.std[
                f"{key}|native"
            ]
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


@torch.no_grad()
def predict_videos(
    model: torch.nn.Module,
    sampler: WindowSampler,
    videos: Sequence[str],
    device: torch.device,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per-frame predictions over whole videos: overlapping chunks, averaged where they meet.
    VA: [T, 2] values; EXPR: [T, 8] class probabilities."""
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
            pred = model(batch.inputs, batch.positions)["pred"].float()
            if sampler.bank.task == "expr":
                pred = pred.softmax(-1)
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
