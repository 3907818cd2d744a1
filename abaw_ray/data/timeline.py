"""Frame-timeline helpers shared by the stages that fill frames without a face."""

from __future__ import annotations

import numpy as np


def nearest_available(needed: np.ndarray, available: np.ndarray) -> np.ndarray:
    """For each needed 0-based frame, the nearest index where ``available`` is True
    (the earlier one on a tie)."""
    idx = np.flatnonzero(available)
    if idx.size == 0:
        raise ValueError("no frame is available to fill from")
    if idx.size == 1:
        return np.full(np.shape(needed), idx[0])
    pos = np.clip(np.searchsorted(idx, needed), 1, idx.size - 1)
    left, right = idx[pos - 1], idx[pos]
    return np.where(np.abs(needed - left) <= np.abs(right - needed), left, right)


def fill_from_nearest(values: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Rows where ``available`` is False take the nearest available row's values."""
    if available.all():
        return values
    src = nearest_available(np.arange(len(values)), available)
    return values[src]
