"""What a trial trains on: a feature bank and windows over it.

The bank's features are shards: objects in Ray's object store, each one feature variant (a
visual feature, an audio feature aligned by ``interp`` or ``pool``, or an audio feature at its
native rate) of a group of whole videos, streamed by one Ray task per variant that reads the
feature store; never by the driver. The driver holds the
bank's index (splits, labels, masks, normalisation statistics and the shards' references); a
trial fetches the shards of its own combination only (``FeatureBank.fetch``), once per node.

Training windows come from training videos only; validation and test run over whole videos in
overlapping chunks that are stitched back, so every frame of every timeline gets a prediction
and the metric is the official global one. Windows never cross a split, and indices are
integers end to end.

A bank's splits (``BANK_SPLITS``) are the corpus's with its validation videos in two:
``splits["selection"]``, on which everything is selected (best epoch, search, ensemble), and
``splits["holdout"]``, which nothing selects on and which is scored once at the end
(``split_holdout``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray
import torch

from abaw_ray.console import progress
from abaw_ray.data.corpus import Corpus, raw_video
from abaw_ray.data.labels import shift_within_videos
from abaw_ray.errors import BadInputError
from abaw_ray.features.align import ALIGNMENTS, frame_features
from abaw_ray.features.store import FeatureStore
from abaw_ray.tasks import Task

BANK_SPLITS = ("train", "selection", "holdout", "test")
CONV_MARGIN = 4  # native frames kept either side of a window for the conv's receptive field
SHARD_BYTES = 256 * 2**20  # a shard's size: what a builder task holds at a time


@dataclass(frozen=True, eq=False)
class FeatureShard:
    """One feature variant of a group of whole videos, one object in the object store: the
    videos' rows concatenated (a trial maps it zero-copy).

    ``values``: float16 [rows, D], video ``v`` at ``values[slice(*bounds[v])]``. A native
    audio shard also holds ``positions``: float32 [frames], the fractional native index of each
    frame's centre, video ``v`` at ``positions[slice(*frame_bounds[v])]``.
    """

    values: np.ndarray
    bounds: dict[str, tuple[int, int]]
    positions: np.ndarray | None = None
    frame_bounds: dict[str, tuple[int, int]] | None = None

    def per_video(self) -> dict[str, np.ndarray]:
        return {v: self.values[a:b] for v, (a, b) in self.bounds.items()}

    def positions_per_video(self) -> dict[str, np.ndarray]:
        assert self.positions is not None and self.frame_bounds is not None
        return {v: self.positions[a:b] for v, (a, b) in self.frame_bounds.items()}


@dataclass(frozen=True, eq=False)
class FeatureBank:
    """Features of every video for a set of store keys, labels and splits.

    ``shards[variant]``: the references of the variant's ``FeatureShard``s, where ``variant`` is
    a visual key, ``"<audio key>|interp"`` / ``"|pool"`` (on the frame timeline) or
    ``"<audio key>|native"``. The arrays themselves are empty until ``fetch``:
    ``frames[variant][video]``: float16 [T, D] on the frame timeline; ``native[key][video]``:
    float16 [N, D] audio at its own rate, with ``positions[key][video]``: float32 [T] the
    fractional native index of each frame's centre (for the learned ``conv`` alignment).
    ``mean``/``std`` are per variant, over the training videos.
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
    dims: dict[str, int] = field(default_factory=dict)  # store key -> feature dim
    shards: dict[str, list[Any]] = field(default_factory=dict)  # variant -> its ObjectRefs

    def variant(self, key: str, alignment: str) -> str:
        return key if self.modality[key] == "visual" else f"{key}|{alignment}"

    def dim(self, key: str) -> int:
        return self.dims[key]

    def variants_for(self, keys: Sequence[str], alignment: str) -> list[str]:
        """The variants a trial of ``keys`` with ``alignment`` reads."""
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise KeyError(f"features {missing} are not in the bank ({self.keys})")
        native = "native" if alignment == "conv" else alignment
        return [self.variant(k, native) for k in keys]

    def fetch(self, variants: Sequence[str]) -> FeatureBank:
        """This bank with the arrays of ``variants`` (only) fetched from the object store."""
        missing = [x for x in variants if x not in self.shards]
        if missing:
            raise KeyError(f"variants {missing} are not in the bank ({sorted(self.shards)})")
        refs = [(x, ref) for x in variants for ref in self.shards[x]]
        frames: dict[str, dict[str, np.ndarray]] = {}
        native: dict[str, dict[str, np.ndarray]] = {}
        positions: dict[str, dict[str, np.ndarray]] = {}
        for (variant, _), shard in zip(refs, ray.get([ref for _, ref in refs])):
            key, _, kind = variant.partition("|")
            if kind == "native":
                native.setdefault(key, {}).update(shard.per_video())
                positions.setdefault(key, {}).update(shard.positions_per_video())
            else:
                frames.setdefault(variant, {}).update(shard.per_video())
        return replace(self, frames=frames, native=native, positions=positions)


class RunningMoments:
    """Per-dimension mean and standard deviation of rows streamed in, in float64."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.squares = np.zeros(dim, np.float64)

    def add(self, rows: np.ndarray, chunk: int = 8192) -> None:
        for a in range(0, len(rows), chunk):  # bounded float64 copies, however long the video
            x = np.asarray(rows[a : a + chunk], np.float64)
            self.count += len(x)
            self.total += x.sum(0)
            self.squares += np.square(x).sum(0)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.count:
            raise ValueError("no rows to normalise with (no training video)")
        mean = self.total / self.count
        var = np.maximum(self.squares / self.count - np.square(mean), 0.0)
        return mean.astype(np.float32), (np.sqrt(var) + 1e-5).astype(np.float32)


def build_shards(
    corpus: Corpus,
    store_root: str,
    variant: str,
    videos: Sequence[str],
    train: Sequence[str],
    shard_bytes: int = SHARD_BYTES,
) -> Iterator[FeatureShard | tuple[np.ndarray, np.ndarray]]:
    """The body of a Ray streaming-generator task: yields ``variant``'s shards over
    ``videos`` (whole videos, about ``shard_bytes`` each, read from the store one video at a
    time), then its normalisation statistics over the ``train`` videos, streamed. The task
    holds one shard at a time, however large the corpus."""
    store = FeatureStore(store_root)
    key, _, kind = variant.partition("|")
    manifest = store.manifest(key)
    dim, entries = int(manifest["dim"]), manifest.get("videos", {})
    train = set(train)
    moments = RunningMoments(dim)
    frame_rows = {v: corpus.num_frames(v) for v in videos}
    if kind == "native":
        rows = {v: max(1, int(entries.get(v, {}).get("rows", 0))) for v in videos}
    else:
        rows = frame_rows
    for group in _groups(videos, rows, dim * 2, shard_bytes):
        values = np.zeros((sum(rows[v] for v in group), dim), np.float16)
        bounds = _bounds(group, rows)
        positions, frame_bounds = None, None
        if kind == "native":
            positions = np.zeros(sum(frame_rows[v] for v in group), np.float32)
            frame_bounds = _bounds(group, frame_rows)
        for v in group:
            a, b = bounds[v]
            if kind != "native":
                values[a:b] = frame_features(store, key, corpus, v, kind or "interp")[0]
            elif v in entries:
                stored = store.load(key, v, mmap=True)
                if len(stored.times):
                    values[a:b] = stored.values
                    centres = corpus.frame_times(v) + 0.5 / corpus.videos[v].fps
                    idx = np.arange(len(stored.times), dtype=np.float64)
                    fa, fb = frame_bounds[v]
                    positions[fa:fb] = np.interp(centres, stored.times, idx)
            if v in train:
                moments.add(values[a:b])
        yield FeatureShard(values, bounds, positions, frame_bounds)
        del values, positions  # before the next shard is allocated
    yield moments.mean_std()


def _groups(
    videos: Sequence[str], rows: dict[str, int], row_bytes: int, limit: int
) -> list[list[str]]:
    """Consecutive videos in groups of at most ``limit`` bytes (a longer video alone)."""
    groups: list[list[str]] = [[]]
    size = 0
    for v in videos:
        if groups[-1] and size + rows[v] * row_bytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(v)
        size += rows[v] * row_bytes
    return [g for g in groups if g]


def _bounds(videos: Sequence[str], rows: dict[str, int]) -> dict[str, tuple[int, int]]:
    ends = np.cumsum([rows[v] for v in videos])
    return {v: (int(e - rows[v]), int(e)) for v, e in zip(videos, ends)}


def split_holdout(
    videos: Sequence[str], holdout: float, seed: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selection videos, held-out videos). ``holdout`` is a fraction of the videos (0 < h < 1,
    at least one video, and at least one left to select on) or a whole number of videos;
    0 holds nothing out. Whole raw videos are drawn (a ``_left``/``_right`` pair is one,
    ``raw_video``), in a seeded order, each taken while the count allows (the first always):
    the draw never splits a pair and does not depend on the order given."""
    ordered = sorted(videos)
    if holdout <= 0:
        return tuple(ordered), ()
    count = int(holdout) if holdout >= 1 else max(1, round(holdout * len(ordered)))
    groups: dict[str, list[str]] = {}
    for v in ordered:
        groups.setdefault(raw_video(v), []).append(v)
    if count >= len(ordered) or len(groups) < 2:
        raise BadInputError(
            f"holdout {holdout} leaves no validation video to select on ({len(ordered)} in all, "
            f"{len(groups)} raw videos)"
        )
    names = sorted(groups)
    held: list[str] = []
    for i in np.random.default_rng(seed).permutation(len(names)):
        size = len(groups[names[i]])
        if not held or len(held) + size <= count:
            held += groups[names[i]]
        if len(held) >= count:
            break
    return tuple(v for v in ordered if v not in set(held)), tuple(v for v in ordered if v in held)


def hold_out(videos: Sequence[str], held: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selection videos, held-out videos) with ``held`` held out, as an earlier search did
    (its pseudo-labels record them). Raises ValueError naming a held video that is not one of
    ``videos``."""
    unknown = sorted(set(held) - set(videos))
    if unknown:
        raise BadInputError(
            f"held-out videos {unknown[:5]} are not validation videos of this corpus"
        )
    ordered = sorted(videos)
    return tuple(v for v in ordered if v not in set(held)), tuple(
        v for v in ordered if v in set(held)
    )


def build_bank(
    corpus: Corpus,
    store: FeatureStore,
    keys: Sequence[str],
    task: Task,
    alignments: Sequence[str] = ALIGNMENTS,
    holdout: float = 0.0,
    seed: int = 0,
    shard_bytes: int = SHARD_BYTES,
    holdout_videos: Sequence[str] | None = None,
) -> FeatureBank:
    """The bank of ``keys`` over every video of the task's splits: one Ray task per feature
    variant builds its shard into the object store (Ray must be initialised; the store must be
    readable where the tasks run); the driver gets only the statistics. ``holdout`` and
    ``seed`` split the validation videos (``split_holdout``), unless ``holdout_videos`` names
    the videos to hold out (``hold_out``)."""
    splits = {s: tuple(corpus.split_videos(task, s)) for s in ("train", "val", "test")}
    if not splits["train"] or not splits["val"]:
        raise BadInputError(f"the corpus has no {task.upper()} training or validation videos")
    if holdout_videos is not None:
        splits["selection"], splits["holdout"] = hold_out(splits.pop("val"), holdout_videos)
    else:
        splits["selection"], splits["holdout"] = split_holdout(splits.pop("val"), holdout, seed)
    videos = [v for s in BANK_SPLITS for v in splits[s]]
    manifests = {k: store.manifest(k) for k in keys}
    for k, m in manifests.items():
        if not m.get("modality"):
            raise FileNotFoundError(f"{store.dir(k)}: no features extracted for {k}")
    modality = {k: str(m["modality"]) for k, m in manifests.items()}
    variants = []
    for k in keys:
        if modality[k] == "visual":
            variants.append(k)
            continue
        variants += [f"{k}|{m}" for m in ("interp", "pool") if m in alignments]
        if "conv" in alignments:
            variants.append(f"{k}|native")
    corpus_ref = ray.put(corpus)
    builder = ray.remote(num_returns="streaming", scheduling_strategy="SPREAD")(build_shards)
    root = store.worker_root()
    streams = {
        x: builder.remote(corpus_ref, root, x, videos, splits["train"], shard_bytes)
        for x in variants
    }
    shards, stats = {}, {}
    for x, stream in progress(streams.items(), desc="building shards", unit="variant"):
        refs = list(stream)  # references only: the shards stay where the task put them
        shards[x], stats[x] = refs[:-1], ray.get(refs[-1])
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
        frames={},
        native={},
        positions={},
        mean={x: m for x, (m, _) in stats.items()},
        std={x: sd for x, (_, sd) in stats.items()},
        labels=labels,
        valid=valid,
        face_mask=faces,
        fps=fps,
        dims={k: int(m["dim"]) for k, m in manifests.items()},
        shards=shards,
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

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
        return Batch(
            [move(x) for x in self.inputs],
            [move(p) for p in self.positions],
            move(self.target),
            move(self.valid),
            move(self.weight),
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
        weights: dict[str, np.ndarray] | None = None,
        video_norm: bool = False,
    ) -> None:
        """``labels`` and ``valid`` replace the bank's training targets (the control, or
        pseudo-labels merged in); ``weights`` are per-frame loss weights (pseudo-labels).
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
        self.video_norm = video_norm
        self._video_stats: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.align = [
            ("conv" if alignment == "conv" and bank.modality[k] == "audio" else None) for k in keys
        ]
        frame_alignment = "interp" if alignment == "conv" else alignment
        self.variants = [bank.variant(k, frame_alignment) for k in keys]

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
        task = self.bank.task
        shape = (length, 2) if task == "va" else (length,)
        target = np.zeros((len(windows), *shape), np.float32 if task == "va" else np.int64)
        valid = np.zeros((len(windows), length), bool)
        weight = np.zeros((len(windows), length), np.float32) if self.weights else None
        for i, (v, s) in enumerate(windows):
            if v in self.labels:
                seg = self.labels[v][s : s + length]
                target[i, : len(seg)] = seg
                valid[i, : len(seg)] = self.valid[v][s : s + length]
                if weight is not None and v in self.weights:
                    weight[i, : len(seg)] = self.weights[v][s : s + length]
        if task == "expr":
            target = np.where(valid, target, 0)
        return Batch(
            inputs,
            positions,
            torch.from_numpy(target),
            torch.from_numpy(valid),
            None if weight is None else torch.from_numpy(weight),
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
