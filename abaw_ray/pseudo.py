"""Pseudo-labels, the seed paper's semi-supervised step: a finished search's ensemble labels the
frames that have no label (the ``-5`` / ``-1`` stretches of training videos, and every frame of
the test videos), each with a confidence, and a later search's trials may train on them,
weighted by that confidence (``TrialConfig.pseudo_labels``, a search dimension).

Confidence: EXPR, the ensemble's probability of its chosen class; AU, how far each unit's
probability lies from the decision (``|2p - 1|`` after the recipe's thresholds), averaged over
the 12 units; VA, how well the ensemble's members agree (1 when they coincide, 0 at a spread
of ``VA_DISAGREEMENT``). Validation videos are never pseudo-labelled: they stay what trials
are selected and scored on.

The control (``PseudoLabels.shifted``) moves each video's pseudo-labels and their confidences
together by one random offset along the frames that carry them, as the shifted-label control
does with real labels: the same frames and weights, no relation to the faces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from abaw_ray.data.labels import shift_within_videos
from abaw_ray.fsutil import atomic_path
from abaw_ray.tasks import AU_DECISION, Task

PSEUDO_FILE = "pseudo_labels.npz"  # what a finished search writes beside its submission
VA_DISAGREEMENT = 0.3  # member spread (std, in label units) at which VA confidence reaches 0


@dataclass(frozen=True)
class PseudoLabels:
    """``values[v]``: VA float32 [T, 2], EXPR int64 [T] or AU uint8 [T, 12];
    ``confidence[v]``: float32 [T] in [0, 1], 0 where the frame has no pseudo-label (it has a
    real one)."""

    task: Task
    values: dict[str, np.ndarray]
    confidence: dict[str, np.ndarray]
    source: str = ""
    # The videos the search that made them selected its recipe on, and those it held out: a
    # search that trains on them must hold out the same ones (its held-out score would
    # otherwise rest on videos these labels were selected on).
    selection_videos: tuple[str, ...] = ()
    holdout_videos: tuple[str, ...] = ()

    @property
    def frames(self) -> int:
        """Frames that carry a pseudo-label."""
        return int(sum((c > 0).sum() for c in self.confidence.values()))

    def mean_confidence(self) -> float:
        c = np.concatenate([c[c > 0] for c in self.confidence.values()] or [np.zeros(0)])
        return float(c.mean()) if c.size else 0.0

    def shifted(self, seed: int) -> PseudoLabels:
        """The control: in each video, the (pseudo-label, confidence) pairs circularly shifted
        together along the frames that carry one (by a quarter to three quarters of them, as
        ``shift_within_videos`` does); the frames with a real label stay untouched."""
        values, confidence = dict(self.values), dict(self.confidence)
        for i, v in enumerate(sorted(self.values)):
            carried = np.flatnonzero(self.confidence[v] > 0)
            if len(carried) < 4:
                continue
            moved, moved_conf = shift_within_videos(
                {v: self.values[v][carried]}, {v: self.confidence[v][carried]}, [v], seed + i
            )
            values[v], confidence[v] = self.values[v].copy(), self.confidence[v].copy()
            values[v][carried], confidence[v][carried] = moved[v], moved_conf[v]
        return replace(
            self, values=values, confidence=confidence, source=f"{self.source} (shifted)"
        )

    def save(self, path: str | Path) -> Path:
        """One ``.npz`` (``values/<video>``, ``confidence/<video>``), written atomically."""
        path = Path(path)
        arrays = {f"values/{v}": x for v, x in self.values.items()}
        arrays.update({f"confidence/{v}": c for v, c in self.confidence.items()})
        arrays["meta/task"] = np.array(self.task)
        arrays["meta/source"] = np.array(self.source)
        arrays["meta/selection_videos"] = np.array(self.selection_videos, dtype=str)
        arrays["meta/holdout_videos"] = np.array(self.holdout_videos, dtype=str)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PseudoLabels:
        """Read a ``pseudo_labels.npz``; a folder means the file inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / PSEUDO_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no pseudo-labels (a finished search writes {PSEUDO_FILE} into its "
                f"folder, OUTPUT/<search name>/)"
            )
        values, confidence = {}, {}
        with np.load(path) as data:
            for name in data.files:
                kind, _, video = name.partition("/")
                if kind == "values":
                    values[video] = data[name]
                elif kind == "confidence":
                    confidence[video] = data[name]
            task, source = str(data["meta/task"]), str(data["meta/source"])
            if "meta/holdout_videos" not in data.files:
                raise ValueError(
                    f"{path}: made before pseudo-label files recorded their search's held-out "
                    "videos; make them again with --make-pseudo-labels"
                )
            selection = tuple(str(v) for v in data["meta/selection_videos"])
            held = tuple(str(v) for v in data["meta/holdout_videos"])
        if set(values) != set(confidence):
            raise ValueError(f"{path}: videos with values and with confidences differ")
        return cls(task, values, confidence, source, selection, held)  # type: ignore[arg-type]


def make_pseudo_labels(
    task: Task,
    ensemble: Mapping[str, np.ndarray],
    members: Sequence[Mapping[str, np.ndarray]],
    labelled: Mapping[str, np.ndarray | None],
    source: str = "",
    probabilities: Mapping[str, np.ndarray] | None = None,
) -> PseudoLabels:
    """Pseudo-labels of every video in ``ensemble`` (its per-frame predictions: VA values or
    EXPR probabilities), confidence 0 on the frames ``labelled[v]`` marks as having a real
    label (``None``: a video with no labels, e.g. a test video; AU: each unit present where the
    recipe's calibrated probability reaches 0.5). ``members``: each member's
    predictions of the same videos (VA confidence is their agreement). EXPR: the class is
    ``ensemble``'s; its confidence is that class's probability in ``probabilities`` (default
    ``ensemble``: give the probabilities before a mode filter, whose one-hot rows would make
    every confidence 1)."""
    values, confidence = {}, {}
    for v, pred in ensemble.items():
        if task == "au":
            p = np.clip(np.asarray(pred, np.float64), 0.0, 1.0)
            values[v] = (p >= AU_DECISION).astype(np.uint8)
            conf = np.abs(2.0 * p - 1.0).mean(-1).astype(np.float32)
        elif task == "expr":
            values[v] = pred.argmax(-1).astype(np.int64)
            probs = pred if probabilities is None else probabilities[v]
            conf = np.take_along_axis(probs, values[v][:, None], -1)[:, 0].astype(np.float32)
        else:
            values[v] = pred.astype(np.float32)
            if len(members) > 1:
                spread = np.stack([m[v] for m in members]).std(0).mean(-1)
            else:
                spread = np.zeros(len(pred))
            conf = np.clip(1.0 - spread / VA_DISAGREEMENT, 0.0, 1.0).astype(np.float32)
        known = labelled.get(v)
        if known is not None:
            conf = np.where(np.asarray(known, bool), 0.0, conf).astype(np.float32)
        confidence[v] = conf
    return PseudoLabels(task, values, confidence, source)


def training_targets(
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
    pseudo: PseudoLabels,
    train_videos: Sequence[str],
    exclude: Sequence[str] = (),
) -> tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(videos, labels, valid, weights) to train on: real labels (weight 1) where they exist,
    pseudo-labels (weight = confidence) where they do not, over the training videos and every
    pseudo-labelled video (test videos) but those in ``exclude`` (what the trial is scored
    on)."""
    skip = set(exclude)
    extra = [v for v in sorted(pseudo.values) if v not in skip]
    videos = tuple(dict.fromkeys([*train_videos, *extra]))
    out_labels, out_valid, weights = dict(labels), dict(valid), {}
    for v in videos:
        conf = pseudo.confidence.get(v)
        real = np.asarray(valid[v], bool) if v in valid else None
        if conf is None:
            weights[v] = real.astype(np.float32)
            continue
        fill = pseudo.values[v]
        if real is None:
            merged, real = fill, np.zeros(len(conf), bool)
        else:
            merged = np.where(real[:, None] if fill.ndim == 2 else real, labels[v], fill)
        use = real | (conf > 0)
        out_labels[v] = merged.astype(fill.dtype)
        out_valid[v] = use
        weights[v] = np.where(real, 1.0, conf).astype(np.float32)
    return videos, out_labels, out_valid, weights
