"""The floor of a corpus: linear models on face pixels, per frame and over a temporal window
with the audio, scored like the jobs.

VA: ridge regression; EXPR: multinomial logistic regression (L2, class-balanced or not); AU:
one logistic regression per unit (L2), deciding at 0.5, or at each unit's threshold chosen on
the selection videos, beside the all-zeros and all-ones answers. Each
frame is its 24x24 grey face (frames without a face image take the nearest face's pixels, as
extraction fills them), standardised with the training frames' statistics. Models fit on the
training videos' valid frames and are scored with the official global score
(``metrics.score_split``), every frame of the validation videos' timelines. As in a search job
(its default ``--holdout``; ``--seed`` draws the held-out videos as a search of that seed
does), the regularisation is chosen on the selection videos and the chosen model is scored
once on the held-out ones: the figures stand beside the search's selection and held-out
columns. The score on all validation videos with the penalty
chosen there (optimistic) is printed too.

The temporal + audio floor is what a user's own first script would add: each frame's pixels
(projected on the training frames' first ``PCA_DIMS`` principal components) and its audio's
log-mel features (``logmel``, interpolated onto the frames; zeros without audio), averaged in
``BINS`` consecutive bins spanning a window centred on the frame, stacked. The window
(``SPANS_S`` seconds) is chosen on the selection videos with the penalty.

    python bench/baselines.py [CORPUS] [--task va|expr|au|all] [--size 24] [--no-temporal]
        [--seed 0]

CORPUS defaults to the embedded corpus.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from abaw_ray.data.corpus import Corpus, load_corpus
from abaw_ray.data.synthetic import ensure_default_corpus
from abaw_ray.data.timeline import fill_from_nearest
from abaw_ray.features.align import align_to_frames
from abaw_ray.features.audio import NoAudioError, decode_audio
from abaw_ray.features.descriptors import logmel
from abaw_ray.metrics import calibrate_thresholds, score_split, tuned_au_f1
from abaw_ray.tasks import AU_NAMES, EXPR_CLASSES, NUM_AUS, NUM_EXPR_CLASSES, OFFICIAL_SCORE, TASKS
from abaw_ray.train.bank import draw_holdout
from abaw_ray.tune.search import SearchConfig

RIDGE = (1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6)  # ridge penalties tried (VA)
L2 = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # logistic regression weight penalties (EXPR)
SPANS_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # temporal windows tried, seconds centred on the frame
BINS = 4  # a window's consecutive bins, each the mean of its frames
PCA_DIMS = 48  # pixel principal components kept for the temporal floor


def face_pixels(corpus: Corpus, video: str, size: int) -> np.ndarray:
    """float32 [T, size*size]: each frame's grey face in [0, 1], filled from the nearest."""
    n = corpus.num_frames(video)
    v = corpus.videos[video]
    out = np.zeros((n, size * size), np.float32)
    have = np.zeros(n, bool)
    for k in v.face_frames[(v.face_frames >= 1) & (v.face_frames <= n)]:
        try:
            with Image.open(v.face_path(int(k))) as im:
                grey = im.convert("L").resize((size, size), Image.BILINEAR)
        except OSError:  # unreadable image: filled like a missing one
            continue
        out[k - 1] = np.asarray(grey, np.float32).reshape(-1) / 255.0
        have[k - 1] = True
    return fill_from_nearest(out, have) if have.any() else out


def design(corpus, task, videos, size) -> tuple[dict, dict, dict]:
    x, labels, valid = {}, {}, {}
    for v in videos:
        x[v] = face_pixels(corpus, v, size)
        lab = corpus.labels_on_timeline(task, v)
        labels[v], valid[v] = lab.values, lab.valid
    return x, labels, valid


def audio_on_frames(corpus: Corpus, video: str) -> np.ndarray:
    """float32 [T, 67]: the video's log-mel features on its frames (zeros without audio)."""
    n, v = corpus.num_frames(video), corpus.videos[video]
    if not v.has_audio:
        return np.zeros((n, 67), np.float32)
    try:
        feats, times = logmel(decode_audio(v.audio_source))
    except NoAudioError:
        return np.zeros((n, 67), np.float32)
    return align_to_frames(feats, times, corpus.frame_times(video))


def windowed(x: np.ndarray, frames: int) -> np.ndarray:
    """[T, BINS * D]: around each frame, the means of ``BINS`` consecutive bins of about
    ``frames / BINS`` frames spanning ``frames`` frames centred on it (cut at the ends)."""
    t = len(x)
    width = max(1, round(frames / BINS))
    csum = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, 0, dtype=np.float64)])
    start = np.arange(t) - (width * BINS) // 2
    out = []
    for b in range(BINS):
        lo = np.clip(start + b * width, 0, t - 1)
        hi = np.clip(start + (b + 1) * width, lo + 1, t)
        out.append((csum[hi] - csum[lo]) / (hi - lo)[:, None])
    return np.hstack(out).astype(np.float32)


def temporal_design(corpus, train, val, fps_of) -> list[tuple[float, tuple, tuple]]:
    """(span, train design, val design) for each span of ``SPANS_S``: pixel principal
    components (fit on the training frames) and log-mel, windowed."""
    (xt, yt, mt), (xv, yv, mv) = train, val
    pix = np.concatenate([xt[v][mt[v]] for v in xt])
    mu = pix.mean(0)
    _, _, vt = np.linalg.svd(pix[:: max(1, len(pix) // 20000)] - mu, full_matrices=False)
    basis = vt[:PCA_DIMS].T
    frame = {
        v: np.hstack([(x[v] - mu) @ basis, audio_on_frames(corpus, v)]) for x in (xt, xv) for v in x
    }
    out = []
    for span in SPANS_S:
        w = {v: windowed(f, max(1, round(span * fps_of(v)))) for v, f in frame.items()}
        out.append((span, ({v: w[v] for v in xt}, yt, mt), ({v: w[v] for v in xv}, yv, mv)))
    return out


def ridge_va(train, val) -> list[tuple[float, dict[str, np.ndarray]]]:
    """(penalty, predictions of every validation video) for each penalty tried."""
    (xt, yt, mt), (xv, _, _) = train, val
    x = np.concatenate([xt[v][mt[v]] for v in xt])
    y = np.concatenate([yt[v][mt[v]] for v in xt])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = np.hstack([(x - mu) / sd, np.ones((len(x), 1), np.float32)])
    gram, rhs = xs.T @ xs, xs.T @ y
    out = []
    for lam in RIDGE:
        w = np.linalg.solve(gram + lam * np.eye(len(gram)), rhs)
        preds = {
            v: np.clip(np.hstack([(xv[v] - mu) / sd, np.ones((len(xv[v]), 1))]) @ w, -1, 1)
            for v in xv
        }
        out.append((lam, preds))
    return out


def fit_logistic(
    x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, l2: float
) -> torch.nn.Linear:
    """Logistic regression by L-BFGS, L2 on the weights: multinomial over the expression
    classes for int64 targets, one per unit (independent sigmoids) for float [N, 12] ones."""
    torch.manual_seed(0)
    units = target.dtype == torch.float32
    model = torch.nn.Linear(x.shape[1], NUM_AUS if units else NUM_EXPR_CLASSES)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    loss_fn = (
        torch.nn.functional.binary_cross_entropy_with_logits
        if units
        else lambda z, y: torch.nn.functional.cross_entropy(z, y, weight=weight)
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        loss = loss + l2 * model.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def logistic_expr(train, val, balanced: bool) -> list[tuple[float, dict[str, np.ndarray]]]:
    """(L2 penalty, class probabilities of every validation video) for each penalty tried."""
    (xt, yt, mt), (xv, _, _) = train, val
    x = np.concatenate([xt[v][mt[v]] for v in xt])
    y = np.concatenate([yt[v][mt[v]] for v in xt]).astype(np.int64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.from_numpy((x - mu) / sd)
    target = torch.from_numpy(y)
    counts = np.bincount(y, minlength=NUM_EXPR_CLASSES).astype(np.float64)
    weight = None
    if balanced:  # inverse frequency, classes absent from training weighted 0
        weight = torch.tensor(
            np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / NUM_EXPR_CLASSES, 0.0),
            dtype=torch.float32,
        )
    out = []
    for l2 in L2:
        model = fit_logistic(xs, target, weight, l2)
        with torch.no_grad():
            preds = {v: model(torch.from_numpy((xv[v] - mu) / sd)).softmax(-1).numpy() for v in xv}
        out.append((l2, preds))
    return out


def logistic_au(train, val) -> list[tuple[float, dict[str, np.ndarray]]]:
    """(L2 penalty, each unit's probability on every validation video) for each penalty."""
    (xt, yt, mt), (xv, _, _) = train, val
    x = np.concatenate([xt[v][mt[v]] for v in xt])
    y = np.concatenate([yt[v][mt[v]] for v in xt]).astype(np.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs, target = torch.from_numpy((x - mu) / sd), torch.from_numpy(y)
    out = []
    for l2 in L2:
        model = fit_logistic(xs, target, None, l2)
        with torch.no_grad():
            preds = {v: model(torch.from_numpy((xv[v] - mu) / sd)).sigmoid().numpy() for v in xv}
        out.append((l2, preds))
    return out


def constant_au(val, value: float) -> list[tuple[float, dict[str, np.ndarray]]]:
    """Every unit present (1) or absent (0) in every frame: the floors a mean F1 has."""
    return [(0.0, {v: np.full((len(x), NUM_AUS), value) for v, x in val[0].items()})]


def tuned_on(fits, select, labels, valid) -> list[tuple[float, dict[str, np.ndarray]]]:
    """Each fit's predictions with every unit's threshold chosen on the ``select`` videos
    (mapped to 0.5), as the search's ensemble chooses them."""
    out = []
    for penalty, preds in fits:
        thresholds, _ = tuned_au_f1(preds, select, labels, valid)
        out.append((penalty, {v: calibrate_thresholds(p, thresholds) for v, p in preds.items()}))
    return out


def temporal_runs(corpus, task, train, val, select, labels, valid) -> list[tuple[str, list]]:
    """The temporal + audio floor's runs: each span's fits, their (span, penalty) pairs
    flattened so that ``choose`` picks both on the selection videos."""
    fps_of = lambda v: corpus.videos[v].fps or 30.0  # noqa: E731
    fits: dict[str, list] = {}
    for span, tr, va in temporal_design(corpus, train, val, fps_of):
        if task == "va":
            found = {"VA   ridge, temporal + audio": ridge_va(tr, va)}
        elif task == "au":
            plain = logistic_au(tr, va)
            found = {
                "AU   logistic per unit, temporal + audio, threshold 0.5": plain,
                "AU   logistic per unit, temporal + audio, thresholds chosen on the selection "
                "videos": tuned_on(plain, select, labels, valid),
            }
        else:
            found = {"EXPR logistic, class-balanced, temporal + audio": logistic_expr(tr, va, True)}
        for name, runs in found.items():
            fits.setdefault(name, []).extend((SpanPenalty(span, lam), p) for lam, p in runs)
    return list(fits.items())


class SpanPenalty(tuple):
    """(window seconds, penalty), printed as ``2 s, 10``."""

    def __new__(cls, span: float, penalty: float):
        return super().__new__(cls, (span, penalty))

    def __format__(self, spec: str) -> str:
        return f"{self[1]:g} in a {self[0]:g} s window"


def choose(task: str, fits, videos, labels, valid) -> tuple[float, dict[str, np.ndarray]]:
    """The (penalty, predictions) that score best on ``videos``."""
    key = OFFICIAL_SCORE[task]
    return max(fits, key=lambda f: score_split(task, f[1], videos, labels, valid)[key])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("corpus", type=Path, nargs="?", help="Aff-Wild2 root (default: embedded)")
    p.add_argument("--task", choices=(*TASKS, "all"), default="all")
    p.add_argument("--size", type=int, default=24, help="face side in pixels")
    p.add_argument("--no-temporal", action="store_true", help="per-frame floors only")
    p.add_argument(
        "--seed", type=int, default=SearchConfig.seed, help="the held-out draw, a search's --seed"
    )
    args = p.parse_args()
    root = args.corpus or ensure_default_corpus()
    corpus = load_corpus(root)
    tasks = TASKS if args.task == "all" else (args.task,)
    print(f"per-frame linear baselines on {args.size}x{args.size} grey faces, {root}")
    for task in tasks:
        train_videos = corpus.split_videos(task, "train")
        val_videos = corpus.split_videos(task, "val")
        if not train_videos or not val_videos:
            print(f"  {task}: no training or validation videos")
            continue
        start = time.perf_counter()
        train = design(corpus, task, train_videos, args.size)
        val = design(corpus, task, val_videos, args.size)
        frames = sum(int(m.sum()) for m in train[2].values())
        where = f"{len(train_videos)} train videos ({frames} valid frames), {len(val_videos)} val"
        # The videos a search job of this --seed selects on and holds out.
        select, held = draw_holdout(corpus, task, val_videos, SearchConfig.holdout, args.seed)
        key = OFFICIAL_SCORE[task]
        labels, valid = val[1], val[2]
        if task == "va":
            runs = [("VA   ridge", ridge_va(train, val))]
        elif task == "au":
            fits = logistic_au(train, val)
            runs = [
                ("AU   logistic per unit, threshold 0.5", fits),
                (
                    "AU   logistic per unit, thresholds chosen on the selection videos",
                    tuned_on(fits, select, labels, valid),
                ),
                ("AU   all zeros", constant_au(val, 0.0)),
                ("AU   all ones", constant_au(val, 1.0)),
            ]
        else:
            runs = [
                (f"EXPR logistic, {kind}", logistic_expr(train, val, kind == "class-balanced"))
                for kind in ("plain", "class-balanced")
            ]
        if not args.no_temporal:
            runs += temporal_runs(corpus, task, train, val, select, labels, valid)
        for name, fits in runs:
            penalty, preds = choose(task, fits, select, labels, valid)
            all_penalty, all_preds = choose(task, fits, val_videos, labels, valid)
            s = score_split(task, all_preds, val_videos, labels, valid)
            sel = score_split(task, preds, select, labels, valid)[key]
            out = score_split(task, preds, held, labels, valid)[key]
            print(
                f"  {name}: selection ({len(select)} videos) {sel:.4f}, "
                f"held out ({', '.join(held)}) {out:.4f} (penalty "
                f"{penalty:g} chosen on the selection videos); all {len(val_videos)} validation "
                f"videos {s[key]:.4f} (penalty {all_penalty:g} chosen there); {where}; "
                f"{time.perf_counter() - start:.0f} s"
            )
            if task == "va":
                print(f"       valence {s['ccc_valence']:.4f}, arousal {s['ccc_arousal']:.4f}")
            elif task == "au":
                print("       per unit: " + ", ".join(f"{a} {s[f'f1_{a}']:.2f}" for a in AU_NAMES))
            else:
                print(
                    "       per class: "
                    + ", ".join(f"{c} {s[f'f1_class{i}']:.2f}" for i, c in enumerate(EXPR_CLASSES))
                )


if __name__ == "__main__":
    main()
