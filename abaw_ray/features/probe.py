"""A learnability probe: does a stored feature predict valence/arousal at all?

Ridge regression from frame features (plus a short moving average for context) to VA on the
training videos, scored with the official global CCC on the validation videos, against the
same probe trained on labels circularly shifted within each video (same marginals and
smoothness, no relation to the features). Cheap enough to run on every embedded-corpus build.
"""

from __future__ import annotations

import numpy as np

from abaw_ray.data.corpus import Corpus
from abaw_ray.data.labels import shift_within_videos
from abaw_ray.features.align import frame_features
from abaw_ray.features.store import FeatureStore
from abaw_ray.metrics import va_scores

RIDGE = (1.0, 10.0, 100.0, 1000.0)


def _context(x: np.ndarray, width: int = 9) -> np.ndarray:
    kernel = np.ones(width) / width
    smooth = np.stack([np.convolve(col, kernel, mode="same") for col in x.T], axis=1)
    return np.concatenate([x, smooth], axis=1)


def _design(corpus: Corpus, store: FeatureStore, keys: list[str], videos: tuple[str, ...]):
    xs, ys, ms = [], [], []
    for v in videos:
        feats = [frame_features(store, k, corpus, v)[0] for k in keys]
        x = _context(np.concatenate(feats, axis=1))
        lab = corpus.labels_on_timeline("va", v)
        xs.append(x)
        ys.append(lab.values)
        ms.append(lab.valid)
    return xs, ys, ms


def probe_va(
    corpus: Corpus, store: FeatureStore, keys: list[str], seed: int = 0
) -> dict[str, float]:
    """Validation mean CCC of the ridge probe and of its shifted-label control."""
    xtr, ytr, mtr = _design(corpus, store, keys, corpus.split_videos("va", "train"))
    xva, yva, mva = _design(corpus, store, keys, corpus.split_videos("va", "val"))
    # The control shifts each video's labels and their mask by one offset, together.
    names = [str(i) for i in range(len(ytr))]
    ys, ms = shift_within_videos(dict(zip(names, ytr)), dict(zip(names, mtr)), names, seed)
    shifted, shifted_m = [ys[n] for n in names], [ms[n] for n in names]
    X = np.concatenate(xtr)
    mu, sd = X.mean(0), X.std(0) + 1e-6

    def fit_score(ys, ms) -> float:
        Y, M = np.concatenate(ys), np.concatenate(ms)
        Xs = np.hstack([(X[M] - mu) / sd, np.ones((M.sum(), 1))])
        best = -1.0
        for lam in RIDGE:
            w = np.linalg.solve(Xs.T @ Xs + lam * np.eye(Xs.shape[1]), Xs.T @ Y[M])
            Xv = np.hstack([(np.concatenate(xva) - mu) / sd, np.ones((sum(map(len, xva)), 1))])
            pred = np.clip(Xv @ w, -1, 1)
            best = max(best, va_scores(pred, np.concatenate(yva), np.concatenate(mva))["mean"])
        return best

    return {"val_ccc": fit_score(ytr, mtr), "control_ccc": fit_score(shifted, shifted_m)}
