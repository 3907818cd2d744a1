"""Plots of a search for people to look at (PNG, logged to MLflow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from abaw_ray.metrics import ccc  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_va_traces(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
    fps: dict[str, float],
) -> Path:
    videos = list(videos)[:3]
    fig, axes = plt.subplots(len(videos), 2, figsize=(12, 2.6 * len(videos)), squeeze=False)
    for row, v in enumerate(videos):
        t = np.arange(len(preds[v])) / fps.get(v, 30.0)
        for col, name in enumerate(("valence", "arousal")):
            ax = axes[row, col]
            truth = np.where(valid[v], labels[v][:, col], np.nan)
            ax.plot(t, truth, color="black", lw=1, label="label")
            ax.plot(t, preds[v][:, col], color="tab:red", lw=1, label="prediction")
            ax.set_ylim(-1.05, 1.05)
            ax.set_title(f"{v} {name}", fontsize=9)
            if row == len(videos) - 1:
                ax.set_xlabel("seconds")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_per_video_ccc(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
) -> Path:
    videos = list(videos)
    scores = np.array(
        [[ccc(preds[v][valid[v], d], labels[v][valid[v], d]) for d in (0, 1)] for v in videos]
    )
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(videos)), 3.5))
    x = np.arange(len(videos))
    ax.bar(x - 0.2, scores[:, 0], 0.4, label="valence")
    ax.bar(x + 0.2, scores[:, 1], 0.4, label="arousal")
    ax.set_xticks(x, videos, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("CCC (per video)")
    ax.legend()
    return _save(fig, path)


def plot_best_over_time(
    path: Path, finish_times: Sequence[float], scores: Sequence[float], metric: str
) -> Path:
    order = np.argsort(finish_times)
    t = np.asarray(finish_times)[order] / 60
    best = np.maximum.accumulate(np.asarray(scores)[order])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.step(t, best, where="post")
    ax.scatter(t, np.asarray(scores)[order], s=12, color="gray", label="trials")
    ax.set_xlabel("minutes since the search started")
    ax.set_ylabel(f"best {metric}")
    ax.legend()
    return _save(fig, path)


def _expr_flat(preds, labels, valid, videos):
    m = np.concatenate([valid[v] for v in videos])
    p = np.concatenate([preds[v] for v in videos])[m].argmax(-1)
    t = np.concatenate([labels[v] for v in videos])[m]
    return p, t


def plot_confusion(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
    title: str = "",
) -> Path:
    from abaw_ray.data.labels import EXPR_CLASSES

    p, t = _expr_flat(preds, labels, valid, videos)
    k = len(EXPR_CLASSES)
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), EXPR_CLASSES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), EXPR_CLASSES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(f"confusion (row-normalised) {title}")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_per_class_f1(
    path: Path,
    preds: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    videos: Sequence[str],
    title: str = "",
) -> Path:
    from abaw_ray.data.labels import EXPR_CLASSES
    from abaw_ray.metrics import f1_per_class

    p, t = _expr_flat(preds, labels, valid, videos)
    f1 = np.nan_to_num(f1_per_class(p, t))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(f1)), f1)
    ax.set_xticks(range(len(f1)), EXPR_CLASSES, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(f"per-class F1 {title}")
    return _save(fig, path)
