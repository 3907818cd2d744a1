"""Temporal smoothing of per-frame predictions, chosen on validation videos after training.

Labels of Aff-Wild2 change slowly next to a 30 fps frame rate, while a model's per-frame output
jitters; filtering each video's predictions along time raises the official scores, and the
best ABAW teams choose the filter and its width on validation. Every filter here runs on one
video at a time (``Smoothing.apply``), never across a boundary between videos.

Kinds (``Smoothing.kind``), each with a ``width`` in frames (odd, so the window is centred):

- ``none``: the identity.
- ``box``: a centred moving average of ``width`` frames.
- ``gaussian``: a Gaussian of the same second moment as the box of that width,
  ``sigma = sqrt((width^2 - 1) / 12)`` (width 1: the identity), truncated at 3 sigma.
- ``mode`` (EXPR only): a majority filter of the per-frame argmax classes.
- ``median`` (AU only): a centred running median of each unit's probability. A median commutes
  with any threshold (the median of the decisions is the decision of the median), so it is the
  majority filter of each unit's decisions at whatever threshold the ensemble then chooses.

VA predictions ([T, 2] values) are filtered column by column. Box and Gaussian filters pad
each video by reflecting it at its ends (``d c b a | a b c d``; or by repeating the end frame,
``edge="nearest"``), so the first and last frames are averages of real frames and never shrink
towards 0. EXPR predictions are [T, 8] class probabilities (what ``predict_videos`` and the
ensemble hold; logits are accepted and turned into probabilities by a softmax): ``box`` and
``gaussian`` average the probabilities over time and return probabilities (the scorer's argmax
is the decision), ``mode`` returns the one-hot rows of the filtered classes (probability 1 on
the chosen class), so ``metrics.score_split`` turns either into the smoothed classes. AU
predictions are [T, 12] probabilities, filtered unit by unit; each filter returns
probabilities, which the ensemble's thresholds then decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from abaw_ray.metrics import score_split, tuned_au_f1
from abaw_ray.tasks import KIND, OFFICIAL_SCORE, Task

Kind = Literal["none", "box", "gaussian", "mode", "median"]
Edge = Literal["reflect", "nearest"]

# The kinds choose_smoothing tries by default for each task (``none`` is always tried).
DEFAULT_KINDS: dict[Task, tuple[Kind, ...]] = {
    "va": ("box", "gaussian"),
    "expr": ("box", "gaussian", "mode"),
    "au": ("box", "gaussian", "median"),
}
# The kinds only some tasks may use.
TASK_KINDS: dict[str, tuple[Task, ...]] = {"mode": ("expr",), "median": ("au",)}
# Window widths in frames (about 0.2 s to 2.5 s at 30 fps).
DEFAULT_WIDTHS: tuple[int, ...] = (5, 9, 15, 25, 45, 75)
# A Gaussian kernel reaches this many sigmas either side of its centre.
GAUSSIAN_TRUNCATE = 3.0
# Scores closer than this count as a tie (the simpler candidate wins).
TIE_TOLERANCE = 1e-9

_NAMES: tuple[str, ...] = ("none", "box", "gaussian", "mode", "median")
_PAD_MODES: dict[str, str] = {"reflect": "symmetric", "nearest": "edge"}


def _check_width(width: int) -> int:
    if isinstance(width, bool) or int(width) != width or width < 1 or width % 2 == 0:
        raise ValueError(f"smoothing width must be an odd number of frames >= 1, got {width}")
    return int(width)


def _as_2d(x: np.ndarray) -> tuple[np.ndarray, bool]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        return a[:, None], True
    if a.ndim != 2:
        raise ValueError(f"expected predictions of shape [T] or [T, D], got {a.shape}")
    return a, False


def _pad(x: np.ndarray, half: int, edge: Edge) -> np.ndarray:
    if edge not in _PAD_MODES:
        raise ValueError(f"unknown edge handling {edge!r}; expected one of {tuple(_PAD_MODES)}")
    return np.pad(x, ((half, half), (0, 0)), mode=_PAD_MODES[edge])


def box_filter(x: np.ndarray, width: int, edge: Edge = "reflect") -> np.ndarray:
    """Centred moving average of ``width`` (odd) frames along axis 0 of ``x`` ([T] or [T, D]),
    the ends padded by ``edge``; same shape, float64."""
    width = _check_width(width)
    a, flat = _as_2d(x)
    if width == 1 or len(a) == 0:
        return a[:, 0].copy() if flat else a.copy()
    padded = _pad(a, width // 2, edge)
    csum = np.concatenate([np.zeros((1, a.shape[1])), np.cumsum(padded, axis=0)])
    out = (csum[width:] - csum[:-width]) / width
    return out[:, 0] if flat else out


def gaussian_sigma(width: int) -> float:
    """The sigma of the Gaussian matching a ``width``-frame box: equal variance,
    ``sqrt((width^2 - 1) / 12)``."""
    width = _check_width(width)
    return float(np.sqrt((width**2 - 1) / 12.0))


def gaussian_kernel(sigma: float, truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """Normalised Gaussian weights at integer offsets ``-r..r``, ``r = ceil(truncate sigma)``;
    ``[1.0]`` for ``sigma == 0``."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return np.ones(1)
    r = int(np.ceil(truncate * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(
    x: np.ndarray, sigma: float, edge: Edge = "reflect", truncate: float = GAUSSIAN_TRUNCATE
) -> np.ndarray:
    """Gaussian smoothing (``sigma`` in frames) along axis 0 of ``x`` ([T] or [T, D]), the ends
    padded by ``edge``; same shape, float64."""
    a, flat = _as_2d(x)
    k = gaussian_kernel(sigma, truncate)
    if len(k) == 1 or len(a) == 0:
        return a[:, 0].copy() if flat else a.copy()
    padded = _pad(a, len(k) // 2, edge)
    out = np.stack([np.convolve(col, k, mode="valid") for col in padded.T], axis=1)
    return out[:, 0] if flat else out


def median_filter(x: np.ndarray, width: int, edge: Edge = "reflect") -> np.ndarray:
    """Centred running median of ``width`` (odd) frames along axis 0 of ``x`` ([T] or [T, D]),
    the ends padded by ``edge``; same shape, float64."""
    width = _check_width(width)
    a, flat = _as_2d(x)
    if width == 1 or len(a) == 0:
        return a[:, 0].copy() if flat else a.copy()
    padded = _pad(a, width // 2, edge)
    out = np.empty_like(a)
    for d in range(a.shape[1]):  # one column at a time: a [T, width] view, not [T, width, D]
        windows = np.lib.stride_tricks.sliding_window_view(padded[:, d], width)
        out[:, d] = np.median(windows, axis=1)
    return out[:, 0] if flat else out


def _kind_problem(kind: str, task: Task) -> str | None:
    only = TASK_KINDS.get(kind)
    if only is not None and task not in only:
        return f"the {kind} filter is for {' and '.join(t.upper() for t in only)} only, not {task}"
    return None


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """[T, C] class scores as probabilities: returned as they are when every row already is a
    distribution (entries in [0, 1] summing to 1 within 1e-4), else a softmax of logits."""
    a = np.asarray(scores, dtype=np.float64)
    if a.size and a.min() >= 0.0 and a.max() <= 1.0 and np.allclose(a.sum(-1), 1.0, atol=1e-4):
        return a
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mode_filter(classes: np.ndarray, width: int, num_classes: int | None = None) -> np.ndarray:
    """Majority filter of integer ``classes`` [T] over a centred window of ``width`` (odd)
    frames; at the ends the window holds only the frames that exist.

    Ties go to the frame's own class when it is among the most frequent; otherwise to the tied
    class whose frames lie nearer the centre (triangular weights), then to the lower index."""
    width = _check_width(width)
    c = np.asarray(classes).astype(np.int64).ravel()
    if width == 1 or c.size == 0:
        return c.copy()
    if c.min() < 0:
        raise ValueError("mode_filter: classes must be >= 0")
    k = int(num_classes if num_classes is not None else c.max() + 1)
    onehot = np.eye(k)[c]
    half = width // 2
    padded = np.pad(onehot, ((half, half), (0, 0)))  # zeros: absent frames count for no class
    csum = np.concatenate([np.zeros((1, k)), np.cumsum(padded, axis=0)])
    counts = np.rint(csum[width:] - csum[:-width])
    tri = np.minimum(np.arange(1, width + 1), np.arange(width, 0, -1)).astype(np.float64)
    near = np.stack([np.convolve(col, tri, mode="valid") for col in padded.T], axis=1)
    # Integer counts first; +0.5 for the own class settles a tie of counts; the nearness term
    # is below 0.25, so it only orders classes tied in count that are not the own class.
    key = counts + 0.25 * near / (tri.sum() + 1.0)
    key[np.arange(len(c)), c] += 0.5
    return key.argmax(-1)


@dataclass(frozen=True)
class Smoothing:
    """One temporal filter: ``kind`` (``none``, ``box``, ``gaussian``, ``mode``) and ``width``
    in frames (odd; ignored by ``none``)."""

    kind: Kind = "none"  # the identity
    width: int = 1  # frames; 1 is the identity for every kind

    def __post_init__(self) -> None:
        if self.kind not in _NAMES:
            raise ValueError(f"unknown smoothing kind {self.kind!r}; expected one of {_NAMES}")
        _check_width(self.width)

    def __str__(self) -> str:
        return "none" if self.is_identity else f"{self.kind}({self.width})"

    @property
    def is_identity(self) -> bool:
        return self.kind == "none" or self.width == 1

    def apply(self, task: Task, prediction: np.ndarray) -> np.ndarray:
        """One video's predictions, smoothed along time, in the format ``score_split`` reads.

        VA: [T, 2] values -> [T, 2] values; AU: [T, 12] probabilities -> probabilities. EXPR:
        [T, 8] probabilities (or logits) -> [T, 8] probabilities (``box``, ``gaussian``) or
        one-hot rows of the filtered classes (``mode``). ``none`` (or width 1) returns the
        input unchanged. Float inputs keep their dtype; the filters compute in float64."""
        if task not in OFFICIAL_SCORE:
            raise ValueError(f"unknown task {task!r}")
        if (wrong := _kind_problem(self.kind, task)) is not None:
            raise ValueError(wrong)
        x = np.asarray(prediction)
        if self.is_identity:
            return x
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        if task == "expr":
            if x.ndim != 2:
                raise ValueError(f"EXPR predictions must be [T, C] class scores, got {x.shape}")
            if self.kind == "mode":
                classes = mode_filter(x.argmax(-1), self.width, x.shape[-1])
                return np.eye(x.shape[-1], dtype=dtype)[classes]
            x = to_probabilities(x)
        if self.kind == "median":
            out = median_filter(x, self.width)
        elif self.kind == "box":
            out = box_filter(x, self.width)
        else:
            out = gaussian_filter(x, gaussian_sigma(self.width))
        return out.astype(dtype, copy=False)


NO_SMOOTHING = Smoothing()


def candidates(
    task: Task,
    kinds: Sequence[Kind] | None = None,
    widths: Sequence[int] = DEFAULT_WIDTHS,
) -> list[Smoothing]:
    """``none``, then every kind x width (width 1 and ``none`` in ``kinds`` dropped as
    duplicates of ``none``), by increasing width, kinds in the given order at each width."""
    kinds = tuple(DEFAULT_KINDS[task] if kinds is None else kinds)
    out = [NO_SMOOTHING]
    for w in sorted({_check_width(w) for w in widths}):
        for kind in kinds:
            s = Smoothing(kind, w)
            if (wrong := _kind_problem(kind, task)) is not None:
                raise ValueError(wrong)
            if not s.is_identity:
                out.append(s)
    return out


def smooth_predictions(
    task: Task, smoothing: Smoothing, preds: Mapping[str, np.ndarray], videos: Sequence[str]
) -> dict[str, np.ndarray]:
    """``smoothing`` applied to each of ``videos`` separately."""
    return {v: smoothing.apply(task, preds[v]) for v in videos}


def choose_smoothing(
    task: Task,
    preds: Mapping[str, np.ndarray],
    videos: Sequence[str],
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
    kinds: Sequence[Kind] | None = None,  # None: DEFAULT_KINDS[task]
    widths: Sequence[int] = DEFAULT_WIDTHS,
    key: str | None = None,  # score_split's key to maximise (None: the official score)
) -> tuple[Smoothing, float, dict[Smoothing, float]]:
    """Try ``none`` and every kind x width on ``videos`` and keep the best by the official
    score of ``metrics.score_split`` (every valid frame of ``videos`` at once), or its ``key``
    (``ccc_valence``: one target's filter). AU candidates are scored with each unit's
    threshold chosen on ``videos`` for that candidate (``tuned_au_f1``), as the ensemble then
    decides.

    Returns (best smoothing, its score, {candidate: score} for every candidate in the order
    tried: ``none`` first, then by increasing width). A candidate must beat the best so far by
    more than ``TIE_TOLERANCE``, so ties go to ``none`` and then to the smaller width."""
    videos = list(videos)
    key = key or OFFICIAL_SCORE[task]
    table: dict[Smoothing, float] = {}
    best, best_score = NO_SMOOTHING, -np.inf
    for s in candidates(task, kinds, widths):
        smoothed = smooth_predictions(task, s, preds, videos)
        if KIND[task] == "multilabel":
            table[s] = tuned_au_f1(smoothed, videos, labels, valid)[1]
        else:
            table[s] = score_split(task, smoothed, videos, labels, valid)[key]
        if table[s] > best_score + TIE_TOLERANCE:
            best, best_score = s, table[s]
    return best, float(best_score), table


def format_table(table: Mapping[Smoothing, float], task: Task | None = None) -> str:
    """The candidates' scores as text lines, ``none`` first, then one line per kind with a
    column per width; the best candidate (first one on a tie) is starred."""
    if not table:
        return ""
    key = OFFICIAL_SCORE[task] if task is not None else "score"
    best = max(table.values())
    star = next(s for s, v in table.items() if v >= best - TIE_TOLERANCE)
    widths = sorted({s.width for s in table if not s.is_identity})
    kinds = list(dict.fromkeys(s.kind for s in table if not s.is_identity))

    def cell(s: Smoothing) -> str:
        return f"{table[s]:.4f}{'*' if s == star else ' '}" if s in table else "   -   "

    lines = [f"{key:>9} " + " ".join(f"{w:>7}" for w in widths)]
    lines.append(f"{'none':>9} {cell(NO_SMOOTHING)}")
    for kind in kinds:
        lines.append(f"{kind:>9} " + " ".join(cell(Smoothing(kind, w)) for w in widths))
    return "\n".join(lines)
