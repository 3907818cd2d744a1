"""Alignment of native-rate audio features to the video's frame timeline.

Which alignment works best is a search choice, not a baked-in step: ``interp`` and ``pool``
here, a learned strided convolution in the models.
"""

from __future__ import annotations

import typing
from typing import Literal

import numpy as np

AlignMethod = Literal["interp", "pool"]  # what this module computes
# A trial's choice: these two, or "conv" (native rate, a learned convolution in the model).
Alignment = Literal["interp", "pool", "conv"]
ALIGNMENTS: tuple[str, ...] = typing.get_args(Alignment)
DIM_BLOCK = 64  # feature columns aligned at a time


def align_to_frames(
    features: np.ndarray, times: np.ndarray, frame_times: np.ndarray, method: AlignMethod = "interp"
) -> np.ndarray:
    """Resample ``features`` [N, D] stamped at ``times`` [N] onto video frames.

    ``frame_times`` [T] are the frames' start times (``k / fps``); frame k spans
    ``[frame_times[k], frame_times[k + 1])``. ``interp`` linearly interpolates at each frame's
    centre (holding the edge values outside the audio); ``pool`` averages the audio frames
    inside each frame's span, and interpolates where a span holds none.
    """
    features = np.asarray(features)
    if features.ndim != 2 or np.shape(times) != (features.shape[0],):
        raise ValueError(f"features {features.shape} and times {np.shape(times)} do not match")
    out = np.zeros((len(frame_times), features.shape[1]), np.float32)
    if len(frame_times) == 0 or features.shape[0] == 0:
        return out
    # Columns are independent: a block at a time keeps the float64 work to [N, DIM_BLOCK]
    # however long the video (a 54,000-frame video's 90,000 Whisper rows at once: ~3 GB).
    for d in range(0, features.shape[1], DIM_BLOCK):
        out[:, d : d + DIM_BLOCK] = _align_block(
            features[:, d : d + DIM_BLOCK], times, frame_times, method
        )
    return out


def _align_block(
    features: np.ndarray, times: np.ndarray, frame_times: np.ndarray, method: AlignMethod
) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    ft = np.asarray(frame_times, dtype=np.float64)
    step = np.diff(ft).mean() if len(ft) > 1 else 1.0
    ends = np.append(ft[1:], ft[-1] + step)
    centres = (ft + ends) / 2
    interp = np.stack([np.interp(centres, t, x[:, d]) for d in range(x.shape[1])], axis=1)
    if method == "interp":
        return interp
    if method != "pool":
        raise ValueError(f"unknown alignment {method!r}; expected 'interp' or 'pool'")
    lo = np.searchsorted(t, ft, side="left")
    hi = np.searchsorted(t, ends, side="left")
    csum = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    count = (hi - lo)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (csum[hi] - csum[lo]) / count
    return np.where(count > 0, pooled, interp)


def frame_features(
    store, key: str, corpus, video: str, method: AlignMethod = "interp"
) -> tuple[np.ndarray, np.ndarray]:
    """A video's stored features on its frame timeline: (float32 [T, D], bool mask [T]).

    Visual arrays already have one row per frame (mask: the frame had a face). Audio arrays are
    aligned with ``method`` (mask: the frame lies within the audio). A video the store lacks
    gives zeros and an all-False mask, so a missing modality never drops a frame.
    """
    n = corpus.num_frames(video)
    dim = store.manifest(key)["dim"]
    try:
        stored = store.load(key, video)
    except FileNotFoundError:
        return np.zeros((n, dim), np.float32), np.zeros(n, bool)
    if stored.times is None:
        values = np.asarray(stored.values[:n], dtype=np.float32)
        mask = stored.mask[:n] if stored.mask is not None else np.ones(len(values), bool)
        if len(values) < n:  # the timeline grew (labels longer than when extracted)
            pad = n - len(values)
            values = np.concatenate([values, np.repeat(values[-1:], pad, 0)])
            mask = np.concatenate([mask, np.zeros(pad, bool)])
        return values, mask
    frame_times = corpus.frame_times(video)
    values = align_to_frames(stored.values, stored.times, frame_times, method)
    end = stored.times[-1] + (1.0 / stored.rate_hz if stored.rate_hz else 0.0)
    return values, frame_times < end
