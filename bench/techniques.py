"""Each technique's measured gain on the realistic embedded corpus (``python -m abaw_ray.data
synth --realistic``): single trials of one base configuration with one technique changed,
``--seeds`` seeds each, scored on held-out validation videos that nothing selects on (not the
best epoch, not the smoothing), beside the shifted-label control of the same base.

    python bench/techniques.py --task va|expr|au [--seeds 3] [--rows ROW,ROW]

Rows: the base (a TCN on face + audio for VA, on the face for EXPR and AU); each technique
switched
on or swapped in; temporal smoothing chosen on the selection videos after training;
pseudo-labels made by the base trials' ensemble (unlabelled stretches of training videos and
the test videos), beside the same pseudo-labels shifted within each video (their control); and
the base trained on shifted labels and masks (the control of the whole setup). The
multi-task row also learns the other two tracks' labels; its control shifts those with its own
(``shift_labels`` moves every label a trial trains on). AU trials are scored as the search's
ensemble decides: each unit's threshold chosen on the selection videos. The gain of a
row is its held-out score minus the base's, seed by seed. The per-frame floor of the same
corpus is ``python bench/baselines.py`` on it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray

from abaw_ray.metrics import calibrate_thresholds, score_split, tuned_au_f1
from abaw_ray.pseudo import make_pseudo_labels
from abaw_ray.runtime import init_ray
from abaw_ray.smoothing import choose_smoothing, smooth_predictions
from abaw_ray.tasks import OFFICIAL_SCORE, TASKS
from abaw_ray.train.loop import TrialConfig, load_predictions
from abaw_ray.train.prepare import EMBEDDED_FEATURES, prepare
from abaw_ray.train.trainer import fit_in_task
from abaw_ray.tune.search import SearchConfig

FEATURES = EMBEDDED_FEATURES
HOLDOUT = SearchConfig.holdout  # the held-out validation videos of a search job, the same draw
BASE: dict[str, dict[str, Any]] = {
    "va": dict(
        task="va",
        features="face_hog+logmel",
        model="tcn",
        hidden=64,
        layers=4,
        dropout=0.2,
        window=128,
        lr=1e-3,
        video_norm=True,
        epochs=15,
        patience=4,
    ),
    "expr": dict(
        task="expr",
        features="face_hog",
        model="tcn",
        hidden=64,
        layers=2,
        dropout=0.3,
        window=32,
        lr=1e-3,
        loss="ce",
        label_smoothing=0.0,
        class_weights=True,
        video_norm=True,
        epochs=15,
        patience=4,
    ),
}
BASE["au"] = {**BASE["expr"], "task": "au"}  # the EXPR base; BCE with positive weights
MULTI_TASK = "multi-task: the other tracks' labels too"
MULTI_TASK_CONTROL = "multi-task, all labels shifted (control)"
AUX = {"va": "expr+au", "expr": "va+au", "au": "va+expr"}  # a multi-task row's other tasks
# Row name -> what it changes in the base. "smoothing" and the pseudo-label rows are special.
ROWS: dict[str, dict[str, dict[str, Any]]] = {
    "va": {
        "features normalised globally, not per video": {"video_norm": False},
        "per-frame MLP instead of the TCN": {"model": "frame_mlp", "layers": 1, "hidden": 128},
        "face only (no audio)": {"features": "face_hog"},
        "modality dropout 0.25": {"modality_dropout": 0.25},
    },
    "expr": {
        "features normalised globally, not per video": {"video_norm": False},
        "per-frame MLP instead of the TCN": {"model": "frame_mlp", "layers": 1, "hidden": 128},
        "with audio (logmel)": {"features": "face_hog+logmel"},
        "no class weights": {"class_weights": False},
        "focal loss (class weights as alpha)": {"loss": "focal"},
        "class-balanced sampling": {"balanced_sampling": True},
    },
    "au": {
        "features normalised globally, not per video": {"video_norm": False},
        "per-frame MLP instead of the TCN": {"model": "frame_mlp", "layers": 1, "hidden": 128},
        "no positive weights": {"class_weights": False},
        "asymmetric loss": {"loss": "asymmetric"},
        "soft F1 + BCE": {"loss": "mix"},
    },
}
for _task, _rows in ROWS.items():
    _rows[MULTI_TASK] = {"aux_tasks": AUX[_task], "aux_weight": 0.5}
    _rows[MULTI_TASK_CONTROL] = {"aux_tasks": AUX[_task], "aux_weight": 0.5, "shift_labels": True}
PSEUDO = "pseudo-labels"
PSEUDO_CONTROL = "pseudo-labels shifted (control)"
SMOOTHING = "smoothing chosen on selection videos"
CONTROL = "shifted labels (control)"


def run_rows(
    rows: dict[str, dict[str, Any]],
    base: dict[str, Any],
    seeds: int,
    bank_ref: ray.ObjectRef,
    storage: str,
    pseudo_ref: ray.ObjectRef | None = None,
    at_once: int = 2,
) -> dict[str, list[dict[str, dict[str, np.ndarray]]]]:
    """Every row x seed, ``at_once`` trials at a time: their checkpoints' predictions."""
    queue = []
    for row, overrides in rows.items():
        for seed in range(seeds):
            trial = TrialConfig.from_dict({**base, **overrides, "seed": seed})
            name = f"{row.split()[0]}-{abs(hash(row)) % 10**6}-s{seed}"
            queue.append((row, seed, trial, name))
    out: dict[str, list] = {row: [None] * seeds for row in rows}
    pending: dict[Any, tuple[str, int]] = {}
    while queue or pending:
        while queue and len(pending) < at_once:
            row, seed, trial, name = queue.pop(0)
            ref = fit_in_task.remote(
                asdict(trial),
                [bank_ref],
                storage,
                name,
                pseudo=[pseudo_ref] if pseudo_ref is not None else None,
                predict_unlabelled=row == "base",
            )
            pending[ref] = (row, seed)
        (done,), _ = ray.wait(list(pending), num_returns=1)
        row, seed = pending.pop(done)
        fitted = ray.get(done)
        if fitted is None:
            raise RuntimeError(f"{row}, seed {seed}: no epoch finished (see {storage})")
        out[row][seed] = load_predictions(fitted[0].path)
    return out


def scores(task, preds, bank) -> tuple[float, float]:
    """(selection score, held-out score) of one trial's predictions; AU with each unit's
    threshold chosen on the selection videos."""
    key = OFFICIAL_SCORE[task]
    if task == "au":
        sel_videos = bank.splits["selection"]
        thresholds, sel = tuned_au_f1(preds["selection"], sel_videos, bank.labels, bank.valid)
        held = {v: calibrate_thresholds(p, thresholds) for v, p in preds["holdout"].items()}
        out = score_split(task, held, bank.splits["holdout"], bank.labels, bank.valid)
        return sel, out[key]
    sel = score_split(task, preds["selection"], bank.splits["selection"], bank.labels, bank.valid)[
        key
    ]
    held = score_split(task, preds["holdout"], bank.splits["holdout"], bank.labels, bank.valid)
    return sel, held[key]


def smoothed(task, preds, bank) -> dict[str, dict[str, np.ndarray]]:
    """The trial's selection and held-out predictions smoothed by the filter chosen on its
    selection videos (AU thresholds are then chosen on the smoothed selection)."""
    chosen, _, _ = choose_smoothing(
        task, preds["selection"], bank.splits["selection"], bank.labels, bank.valid
    )
    return {
        **preds,
        **{
            split: smooth_predictions(task, chosen, preds[split], list(bank.splits[split]))
            for split in ("selection", "holdout")
        },
    }


def pseudo_labels(task, base_runs, bank):
    """The base trials' ensemble (their mean) labels the training videos' unlabelled frames
    and the test videos."""
    per_video = [{**p["unlabelled"], **p["test"]} for p in base_runs]
    ensemble = {v: np.mean([p[v] for p in per_video], axis=0) for v in per_video[0]}
    labelled = {v: (bank.valid[v] if v in bank.valid else None) for v in ensemble}
    return make_pseudo_labels(task, ensemble, per_video, labelled, "bench base ensemble")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="va")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument(
        "--rows",
        help="comma-separated row names to run beside the base and its control (default: all; "
        f"'{SMOOTHING}' and '{PSEUDO}' name those rows)",
    )
    p.add_argument("--epochs", type=int, help="override the base's epochs (a quick look)")
    p.add_argument("--store", type=Path, help="feature store to reuse (default: a temporary one)")
    args = p.parse_args()
    task = args.task
    base_config = {**BASE[task], **({"epochs": args.epochs} if args.epochs else {})}
    started = time.time()
    init_ray(num_cpus=args.num_cpus)
    with tempfile.TemporaryDirectory(prefix="techniques-") as tmp:
        prepared = prepare(
            None,
            args.store or Path(tmp) / "features",
            FEATURES,
            task,
            holdout=HOLDOUT,
            seed=0,
            realistic=True,
        )
        bank = prepared.bank
        storage = str(Path(tmp) / "runs")
        wanted = set(args.rows.split(",")) if args.rows else None
        rows = {
            "base": {},
            **{r: o for r, o in ROWS[task].items() if wanted is None or r in wanted},
            CONTROL: {"shift_labels": True},
        }
        runs = run_rows(
            rows, base_config, args.seeds, prepared.bank_ref, storage, at_once=args.num_cpus
        )
        if wanted is None or SMOOTHING in wanted:
            runs[SMOOTHING] = [smoothed(task, r, bank) for r in runs["base"]]
        pseudo = pseudo_labels(task, runs["base"], bank)
        if wanted is None or PSEUDO in wanted:
            runs.update(
                run_rows(
                    {
                        PSEUDO: {"pseudo_labels": True},
                        PSEUDO_CONTROL: {"pseudo_labels": True, "shift_pseudo_labels": True},
                    },
                    base_config,
                    args.seeds,
                    prepared.bank_ref,
                    storage,
                    ray.put(pseudo),
                    at_once=args.num_cpus,
                )
            )
    key = OFFICIAL_SCORE[task]
    base = [scores(task, r, bank) for r in runs["base"]]
    print(
        f"techniques on the realistic corpus, task {task}: {len(bank.splits['train'])} training "
        f"videos, selection {', '.join(bank.splits['selection'])}, held out "
        f"{', '.join(bank.splits['holdout'])}; {args.seeds} seeds; base "
        f"{BASE[task]['model']} {BASE[task]['features']}; pseudo-labels on {pseudo.frames} "
        f"frames (mean confidence {pseudo.mean_confidence():.2f})"
    )
    print(f"  {'row':<40}{'held-out ' + key:>22}{'gain':>18}{'selection':>12}   per seed")
    for row, trials in runs.items():
        s = [scores(task, r, bank) for r in trials]
        held = [h for _, h in s]
        gain = [h - b for h, (_, b) in zip(held, base)]
        sd = statistics.stdev(held) if len(held) > 1 else 0.0
        gsd = statistics.stdev(gain) if len(gain) > 1 else 0.0
        print(
            f"  {row:<40}{statistics.mean(held):>14.4f} ± {sd:.4f}"
            f"{statistics.mean(gain):>+11.4f} ± {gsd:.4f}"
            f"{statistics.mean(x for x, _ in s):>12.4f}   " + " ".join(f"{h:.3f}" for h in held)
        )
    print(f"techniques: {len(runs)} rows x {args.seeds} seeds in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
