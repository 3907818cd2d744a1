"""The feature bank: what a trial trains on, as shards in Ray's object store.

Each shard is one feature variant (``variant_name``: a visual feature, an audio feature aligned
by ``interp`` or ``pool``, or an audio feature at its native rate) of a group of whole videos,
streamed by one Ray task per variant that reads the feature store; never by the driver. The
driver holds the bank's index (splits, labels, masks, normalisation statistics and the shards'
references); a trial fetches the shards of its own combination only (``FeatureBank.fetch``),
once per node.

A bank's splits (``BANK_SPLITS``) are the corpus's with its validation videos in two:
``splits["selection"]``, on which everything is selected (best epoch, search, ensemble), and
``splits["holdout"]``, which nothing selects on and which is scored once at the end
(``split_holdout``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray

from abaw_ray.affwild2 import raw_video
from abaw_ray.console import progress
from abaw_ray.data.corpus import Corpus
from abaw_ray.errors import BadInputError
from abaw_ray.features.align import ALIGNMENTS, frame_features
from abaw_ray.features.store import FeatureStore
from abaw_ray.tasks import KIND, TASKS, Task

BANK_SPLITS = ("train", "selection", "holdout", "test")
NATIVE = "native"  # an audio feature's variant at its own rate (what the conv alignment reads)


def variant_name(key: str, visual: bool, alignment: str = "interp") -> str:
    """The name of a feature variant: a visual key itself; an audio key with how it meets the
    frames, ``<key>|interp``, ``<key>|pool``, or ``<key>|native`` for the ``conv`` alignment
    (the model aligns it)."""
    if visual:
        return key
    return f"{key}|{NATIVE if alignment in ('conv', NATIVE) else alignment}"


def variant_parts(variant: str) -> tuple[str, str]:
    """(store key, how it meets the frames: ``frames`` for a visual feature, else the
    alignment or ``native``) of a variant name."""
    key, _, form = variant.partition("|")
    return key, form or "frames"


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
    # other task -> (labels, valid) of this task's training videos that have its labels
    # (multi-task trials learn them beside their own; never on the videos scored on)
    others: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(
        default_factory=dict
    )

    def dim(self, key: str) -> int:
        return self.dims[key]

    def variants_for(self, keys: Sequence[str], alignment: str) -> list[str]:
        """The variants a trial of ``keys`` with ``alignment`` reads."""
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise KeyError(f"features {missing} are not in the bank ({self.keys})")
        return [variant_name(k, self.modality[k] == "visual", alignment) for k in keys]

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
            key, form = variant_parts(variant)
            if form == NATIVE:
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
    key, form = variant_parts(variant)
    manifest = store.manifest(key)
    dim, entries = int(manifest["dim"]), manifest.get("videos", {})
    train = set(train)
    moments = RunningMoments(dim)
    frame_rows = {v: corpus.num_frames(v) for v in videos}
    if form == NATIVE:
        rows = {v: max(1, int(entries.get(v, {}).get("rows", 0))) for v in videos}
    else:
        rows = frame_rows
    for group in _groups(videos, rows, dim * 2, shard_bytes):
        values = np.zeros((sum(rows[v] for v in group), dim), np.float16)
        bounds = _bounds(group, rows)
        positions, frame_bounds = None, None
        if form == NATIVE:
            positions = np.zeros(sum(frame_rows[v] for v in group), np.float32)
            frame_bounds = _bounds(group, frame_rows)
        for v in group:
            a, b = bounds[v]
            if form != NATIVE:
                method = "interp" if form == "frames" else form  # a visual feature: its rows
                values[a:b] = frame_features(store, key, corpus, v, method)[0]
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


HOLDOUT_DRAWS = 64  # seeded draws tried for held-out videos whose classes the selection holds


def label_classes(corpus: Corpus, task: Task, videos: Sequence[str]) -> dict[str, frozenset[int]]:
    """Per video, the expression classes (EXPR) or the action units (AU) that its valid labels
    hold; empty for VA, whose scores have no classes."""
    if KIND[task] == "regression":
        return {}
    out = {}
    for v in videos:
        lab = corpus.labels[task][v]
        values = lab.values[lab.valid]
        held = np.unique(values) if KIND[task] == "multiclass" else np.flatnonzero(values.any(0))
        out[v] = frozenset(int(k) for k in held)
    return out


def split_holdout(
    videos: Sequence[str],
    holdout: float,
    seed: int,
    classes: Mapping[str, frozenset[int]] | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selection videos, held-out videos). ``holdout`` is a fraction of the videos (0 < h < 1,
    at least one video, and at least one left to select on) or a whole number of videos;
    0 holds nothing out. Whole raw videos are drawn (a ``_left``/``_right`` pair is one,
    ``raw_video``), in a seeded order, each taken while the count allows (the first always):
    the draw never splits a pair and does not depend on the order given.

    With ``classes`` (``label_classes``), the first of ``HOLDOUT_DRAWS`` seeded draws whose
    held-out videos hold no class that the selection videos lack is taken: a held-out class
    that nothing was selected on scores the split's luck, not the search. When no draw
    qualifies, the first is taken with a warning naming the classes."""
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
    rng = np.random.default_rng(seed)

    def draw() -> set[str]:
        held: list[str] = []
        for i in rng.permutation(len(names)):
            size = len(groups[names[i]])
            if not held or len(held) + size <= count:
                held += groups[names[i]]
            if len(held) >= count:
                break
        return set(held)

    def unseen(held: set[str]) -> frozenset[int]:
        """The held-out videos' classes that no selection video holds."""
        selected = set().union(*(classes[v] for v in ordered if v not in held))
        return frozenset().union(*(classes[v] for v in held)) - selected

    first = held = draw()
    if classes:
        for _ in range(HOLDOUT_DRAWS - 1):
            if not unseen(held):
                break
            held = draw()
        if unseen(held):
            held = first
            warnings.warn(
                f"held-out videos {sorted(held)} hold classes {sorted(unseen(held))} that no "
                f"selection video holds, in every one of {HOLDOUT_DRAWS} draws: their score "
                "there measures the split more than the search",
                stacklevel=2,
            )
    return tuple(v for v in ordered if v not in held), tuple(v for v in ordered if v in held)


def draw_holdout(
    corpus: Corpus, task: Task, videos: Sequence[str], holdout: float, seed: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``split_holdout`` of the task's ``videos`` with their label classes: how every job and
    bench of a ``--seed`` draws its held-out videos."""
    classes = label_classes(corpus, task, videos) if holdout > 0 else None
    return split_holdout(videos, holdout, seed, classes)


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
    ``seed`` split the validation videos (``draw_holdout``), unless ``holdout_videos`` names
    the videos to hold out (``hold_out``)."""
    splits = {s: tuple(corpus.split_videos(task, s)) for s in ("train", "val", "test")}
    if not splits["train"] or not splits["val"]:
        raise BadInputError(f"the corpus has no {task.upper()} training or validation videos")
    if holdout_videos is not None:
        splits["selection"], splits["holdout"] = hold_out(splits.pop("val"), holdout_videos)
    else:
        splits["selection"], splits["holdout"] = draw_holdout(
            corpus, task, splits.pop("val"), holdout, seed
        )
    videos = [v for s in BANK_SPLITS for v in splits[s]]
    manifests = {k: store.manifest(k) for k in keys}
    for k, m in manifests.items():
        if not m.get("modality"):
            raise FileNotFoundError(f"{store.dir(k)}: no features extracted for {k}")
    modality = {k: str(m["modality"]) for k, m in manifests.items()}
    variants = list(
        dict.fromkeys(
            variant_name(k, modality[k] == "visual", alignment)
            for k in keys
            for alignment in alignments
        )
    )
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
    others = {}
    for other in TASKS:
        held = [v for v in splits["train"] if v in corpus.labels.get(other, {})]
        if other != task and held:
            timelines = {v: corpus.labels_on_timeline(other, v) for v in held}
            others[other] = (
                {v: t.values for v, t in timelines.items()},
                {v: t.valid for v, t in timelines.items()},
            )
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
        others=others,
    )
