"""One trial: the ``train_loop_per_worker`` of a Ray Train ``TorchTrainer``.

Builds the model, wraps it for data-parallel workers, shards the training windows per worker,
trains with AdamW, gradient clipping, the task loss plus the model's auxiliary loss, stops
early, and reports every epoch with ``ray.train.report``. Epochs are scored on the selection
videos (``splits["selection"]``) only; the held-out videos (``splits["holdout"]``) are predicted
but never scored here, so nothing a trial chooses depends on them. The best epoch is
checkpointed with its per-frame predictions of every non-training split (what the ensemble
reads).
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from abaw_ray import tracking
from abaw_ray.data.labels import shift_training_targets
from abaw_ray.features.align import Alignment
from abaw_ray.fsutil import atomic_path, atomic_write_text
from abaw_ray.losses import (
    au_asymmetric_loss,
    au_bce_loss,
    au_focal_loss,
    au_pos_weights,
    ccc_loss,
    class_weights,
    focal_loss,
    smoothed_cross_entropy,
    soft_au_f1_loss,
    soft_macro_f1_loss,
)
from abaw_ray.metrics import score_split
from abaw_ray.models import create_model, list_models, model_settings
from abaw_ray.pause import pause_point
from abaw_ray.pseudo import PseudoLabels, training_targets
from abaw_ray.settings import problem
from abaw_ray.tasks import KIND, NUM_EXPR_CLASSES, PRIMARY_METRIC, TASKS, TRIAL_FINISHED, Task
from abaw_ray.train.bank import FeatureBank
from abaw_ray.train.windows import (
    WindowSampler,
    balanced_window_weights,
    predict_videos,
    training_windows,
)

Mode = Literal["frozen", "finetune"]  # stored features, or the image backbone trains too
# expr / au: soft F1 + cross entropy (au: BCE), either alone, focal; au only: asymmetric
Loss = Literal["mix", "ce", "f1", "focal", "asymmetric"]
MODEL_STATE = "model.pt"
PREDICTIONS = "predictions.npz"
TRIAL_JSON = "trial.json"
STOP_FLAG_TIMEOUT_S = 60  # a stop flag's answer awaited at most; none by then: not stopped


# What a worker loop's config holds besides a TrialConfig's fields: the data's object
# reference, the pseudo-labels' (a search started from an earlier one's), whether to predict
# the training videos' unlabelled frames too (a search that will make pseudo-labels), the queue
# a single trial's epochs reach MLflow by (tracking.epoch_relay), the search's stop flag.
LOOP_KEYS = frozenset({"bank", "pseudo", "predict_unlabelled", "epoch_relay", "stop_flag"})


@dataclass(frozen=True)
class TrialConfig:
    """Every choice of one trial; what a search samples. Its model's own settings (``hidden``,
    ``layers``, ``gates``...) are the model's (``model_settings``): ``model_args`` holds those
    given, the model's defaults the rest. ``from_dict`` reads a flat dict (a search's sample)
    and refuses unknown keys and values of the wrong type, naming the valid ones."""

    task: Task = "va"
    mode: Mode = "frozen"  # frozen: stored features; finetune: the image backbone trains too
    features: str = "face_hog+logmel"  # store keys joined by "+"
    model: str = "attention"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    window: int = 64  # frames per training window
    stride: int | None = None  # frames between training windows (None: half the window)
    alignment: Alignment = "interp"  # audio to frames: interp | pool | conv
    video_norm: bool = False  # standardise features per video (a subject's own baseline)
    grad_clip: float = 1.0  # max gradient norm (0: off)
    epochs: int = 20
    batch_size: int = 16
    patience: int = 6  # epochs without a better selection score before stopping
    seed: int = 0
    teacher_forcing_epochs: int = 0  # mctn: epochs to decay teacher forcing to 0 (0: epochs/2)
    # expression and action-unit tasks
    loss: Loss = "mix"  # expr, au: f1 | ce | mix | focal; au: asymmetric too
    f1_weight: float = 0.5  # loss=mix: weight of soft F1 against cross entropy (au: BCE)
    focal_gamma: float = 2.0  # loss=focal: how much easy frames are down-weighted
    label_smoothing: float = 0.1  # expr: cross entropy's
    class_weights: bool = False  # expr: inverse-frequency class weights; au: positive weights
    balanced_sampling: bool = False  # expr: draw training windows with rare classes more often
    # multi-task: other tasks' labels learnt on the training videos that have them
    aux_tasks: str = ""  # "+"-joined other tasks ("expr+au"); "": the trial's own task only
    aux_weight: float = 0.5  # each other task's loss, weighed against the trial's own
    # semi-supervised
    pseudo_labels: bool = False  # also train on an earlier search's pseudo-labels (weighted)
    # controls
    shift_labels: bool = False  # train on every target (pseudo too) shifted within each video
    shift_pseudo_labels: bool = False  # with pseudo_labels: theirs alone shifted
    # the model's own settings given (the rest: its defaults)
    model_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        d = {k: v for k, v in d.items() if k not in LOOP_KEYS}
        args = dict(d.pop("model_args", None) or {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)} - {"model_args"}
        model = d.get("model", cls.model)
        if model not in list_models():
            raise ValueError(f"model: unknown model {model!r}; known: {', '.join(list_models())}")
        settings = model_settings(model)
        for key in sorted(set(d) - known):
            if key not in settings:
                raise ValueError(
                    f"unknown trial setting {key!r} (model {model}); trial settings: "
                    f"{', '.join(sorted(known))}; {model}'s settings: {', '.join(settings)}"
                )
            args[key] = d.pop(key)
        wrong = [problem(k, hints[k], v) for k, v in d.items()]
        wrong += [problem(k, settings[k].annotation, v) for k, v in args.items() if k in settings]
        wrong += [f"{k}: model {model} takes no such setting" for k in args if k not in settings]
        task = d.get("task", cls.task)
        wrong += [task_problem(task, k, v) for k, v in d.items() if k != "task"]
        if any(wrong):
            raise ValueError("; ".join(w for w in wrong if w))
        return cls(**d, model_args={k: v for k, v in args.items() if v is not None})

    @property
    def other_tasks(self) -> tuple[Task, ...]:
        """The tasks whose labels the trial learns beside its own (``aux_tasks``)."""
        return tuple(t for t in self.aux_tasks.split("+") if t)  # type: ignore[misc]

    @property
    def feature_keys(self) -> list[str]:
        return [k for k in self.features.split("+") if k]

    @property
    def window_stride(self) -> int:
        return self.stride or max(1, self.window // 2)

    def settings(self) -> dict[str, Any]:
        """Every setting the trial trains with, flat: its fields and all of its model's
        settings, the model's defaults where none was given (what MLflow records)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_args"}
        defaults = {s.name: s.default for s in model_settings(self.model).values()}
        return {**out, **defaults, **self.model_args}


# Setting values that only some tasks have: (setting, value) -> those tasks.
TASK_ONLY: dict[tuple[str, Any], tuple[Task, ...]] = {
    ("loss", "asymmetric"): ("au",),
    ("balanced_sampling", True): ("expr",),
}


def task_problem(task: Any, name: str, value: Any) -> str | None:
    """Why setting ``name`` cannot be ``value`` in a trial of ``task`` (None when it can): a
    value only some tasks have, or ``aux_tasks`` naming an unknown task or the trial's own."""
    if task not in TASKS:
        return f"task: {task!r} is not one of {', '.join(TASKS)}"
    only = TASK_ONLY.get((name, value))
    if only is not None and task not in only:
        return f"{name}: {value!r} is for {' and '.join(only)} trials only, not {task}"
    if name == "aux_tasks" and isinstance(value, str):
        parts = [t for t in value.split("+") if t]
        valid = [t for t in TASKS if t != task]
        bad = [t for t in parts if t not in valid] + [t for t in set(parts) if parts.count(t) > 1]
        if bad:
            return (
                f"aux_tasks: {value!r} names {bad[0]!r}; a {task} trial's other tasks are "
                f"{' and '.join(valid)}, '+'-joined (or '' for none)"
            )
    return None


def trial_targets(
    trial: TrialConfig, bank: FeatureBank, pseudo: PseudoLabels | None = None
) -> tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, np.ndarray], dict | None, dict]:
    """What a trial trains on: (videos, labels, valid, per-frame weights or None, the other
    tasks' {task: (labels, valid)}). The training videos' real labels, and with
    ``trial.pseudo_labels`` the pseudo-labels of their unlabelled frames and of the test
    videos, weighted by confidence, never on the videos the trial is scored on (selection and
    held-out). A multi-task trial's other tasks' labels are the training videos' only
    (``FeatureBank.others``). The control (``shift_labels``) shifts all of them, pseudo-labels
    and other tasks included, with their masks and weights (``shift_training_targets``);
    ``shift_pseudo_labels`` alone shifts the pseudo-labels only (their own control)."""
    videos, labels, valid, weights = bank.splits["train"], bank.labels, bank.valid, None
    missing = [t for t in trial.other_tasks if t not in bank.others]
    if missing:
        raise ValueError(
            f"aux_tasks: the corpus has no {' or '.join(t.upper() for t in missing)} labels on "
            f"the {bank.task.upper()} training videos"
        )
    others = {t: bank.others[t] for t in trial.other_tasks}
    if trial.pseudo_labels:
        if pseudo is None:
            raise ValueError("pseudo_labels=True needs pseudo-labels")
        if trial.shift_pseudo_labels and not trial.shift_labels:
            pseudo = pseudo.shifted(trial.seed)
        videos, labels, valid, weights = training_targets(
            labels,
            valid,
            pseudo,
            videos,
            exclude=(*bank.splits["selection"], *bank.splits["holdout"]),
        )
    if trial.shift_labels:
        labels, valid, weights, others = shift_training_targets(
            labels, valid, weights, videos, trial.seed, others
        )
    return tuple(videos), labels, valid, weights, others


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_loss(
    trial: TrialConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor | None,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The trial's training loss; ``weights`` are per-class weights (EXPR) or per-unit
    positive weights (AU), ``frame_weight`` per-frame ones (pseudo-labels' confidence)."""
    if trial.task == "va":
        return ccc_loss(pred, target, valid, frame_weight=frame_weight)
    if trial.task == "au":
        return au_loss(trial, pred, target, valid, weights, frame_weight)
    if trial.loss == "focal":
        return focal_loss(pred, target, valid, trial.focal_gamma, weights, frame_weight)
    ce = smoothed_cross_entropy(pred, target, valid, trial.label_smoothing, weights, frame_weight)
    if trial.loss == "ce":
        return ce
    f1 = soft_macro_f1_loss(pred, target, valid, frame_weight=frame_weight)
    if trial.loss == "f1":
        return f1
    return trial.f1_weight * f1 + (1 - trial.f1_weight) * ce


def au_loss(
    trial: TrialConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    pos_weight: torch.Tensor | None,
    frame_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """An AU trial's loss by ``trial.loss``: BCE (``ce``), its focal or asymmetric variant, a
    soft mean F1, or the mix of soft F1 and BCE."""
    if trial.loss == "focal":
        return au_focal_loss(pred, target, valid, trial.focal_gamma, pos_weight, frame_weight)
    if trial.loss == "asymmetric":
        return au_asymmetric_loss(pred, target, valid, frame_weight=frame_weight)
    bce = au_bce_loss(pred, target, valid, pos_weight, frame_weight)
    if trial.loss == "ce":
        return bce
    f1 = soft_au_f1_loss(pred, target, valid, frame_weight=frame_weight)
    if trial.loss == "f1":
        return f1
    return trial.f1_weight * f1 + (1 - trial.f1_weight) * bce


def other_task_loss(task: Task, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor):
    """A multi-task trial's loss on another task's labels: that task's plain loss (CCC, cross
    entropy, BCE), 0 on a batch without any of its labels."""
    if not bool(valid.any()):
        return pred.sum() * 0.0
    if KIND[task] == "regression":
        return ccc_loss(pred, target, valid)
    if KIND[task] == "multiclass":
        return smoothed_cross_entropy(pred, target, valid)
    return au_bce_loss(pred, target, valid)


def validation_metrics(
    task: Task,
    preds: Mapping[str, np.ndarray],
    videos: list[str],
    labels: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
) -> dict[str, float]:
    """The official score of the selection videos, as a trial reports it (``val_`` names)."""
    return {f"val_{k}": v for k, v in score_split(task, preds, videos, labels, valid).items()}


def trial_class_weights(
    trial: TrialConfig, labels: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], train
) -> torch.Tensor | None:
    """Inverse-frequency weights of the training frames when the trial asks for them: per
    class (EXPR) or each unit's positive weight (AU)."""
    if trial.task == "va" or not trial.class_weights:
        return None
    frames = np.concatenate([labels[v][valid[v]] for v in train])
    return au_pos_weights(frames) if trial.task == "au" else class_weights(frames)


def save_trial_checkpoint(
    folder: Path,
    trial: TrialConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    metrics: dict[str, float],
    predictions: dict[str, dict[str, np.ndarray]],
    input_dims: list[int],
) -> None:
    """Model and optimizer state, per-frame ``predictions[split][video]`` and the trial."""
    with atomic_path(folder / MODEL_STATE) as tmp:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            tmp,
        )
    with atomic_path(folder / PREDICTIONS, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp, **{f"{split}/{v}": p for split, per in predictions.items() for v, p in per.items()}
        )
    import ray

    saved = {
        "trial": asdict(trial),
        "epoch": epoch,
        "metrics": metrics,
        "input_dims": input_dims,
        # Where the worker that wrote it ran (None outside Ray).
        "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
    }
    atomic_write_text(folder / TRIAL_JSON, json.dumps(saved, indent=1))


def load_trial_state(folder: Path, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model/optimizer state, trial.json) of a trial checkpoint; tensors only, no pickles."""
    state = torch.load(folder / MODEL_STATE, map_location=device, weights_only=True)
    return state, json.loads((folder / TRIAL_JSON).read_text())


def load_predictions(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {video: array}}`` (val, holdout, test, and ``unlabelled``: the training videos
    with unlabelled frames) from a trial checkpoint folder."""
    out: dict[str, dict[str, np.ndarray]] = {
        "selection": {},
        "holdout": {},
        "test": {},
        "unlabelled": {},
    }
    with np.load(Path(folder) / PREDICTIONS) as data:
        for name in data.files:
            split, video = name.split("/", 1)
            out.setdefault(split, {})[video] = data[name]
    return out


def resume_point(
    checkpoint: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    metric: str,
    device: torch.device,
) -> tuple[int, float, int]:
    """(first epoch to run, best score so far, its epoch), after loading ``checkpoint`` (a
    ``ray.train.Checkpoint`` or None) into the model and optimizer."""
    if checkpoint is None:
        return 0, -math.inf, -1
    with checkpoint.as_directory() as d:
        state, saved = load_trial_state(Path(d), device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, saved["metrics"][metric], state["epoch"]


def last_epoch(trial: TrialConfig, epoch: int, best_epoch: int) -> float:
    """1.0 when ``epoch`` (0-based) ends the trial: its last, or ``patience`` epochs without a
    better selection score (``TRIAL_FINISHED``); else 0.0."""
    return float(epoch + 1 >= trial.epochs or epoch - best_epoch >= trial.patience)


def stop_requested(config: dict[str, Any]) -> bool:
    """Whether the search stopped this trial (ASHA, the time budget, an interrupt): the
    trial's ``stop_flag`` actor says so, or is gone with the Tune trial that owned it. A flag
    slow to answer (a loaded node) is not a stop. A trial outside a search has no flag and
    runs to its end."""
    import ray

    flag = config.get("stop_flag")
    if not flag:
        return False
    try:
        return bool(ray.get(flag[0].is_set.remote(), timeout=STOP_FLAG_TIMEOUT_S))
    except ray.exceptions.GetTimeoutError:
        return False
    except ray.exceptions.RayActorError:
        return True


@dataclass
class WorkerContext:
    """What the training loop asks of where it runs: Ray Train's worker
    (``ray_train_context``) or a plain process (a test: ``train_epochs`` with rank 0 of 1)."""

    rank: int
    world: int
    device: torch.device
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module]  # DDP wrapping, device moves
    checkpoint: Any  # the checkpoint to resume from (a ``ray.train.Checkpoint``), or None
    report: Callable[[dict[str, float], Path | None], None]  # metrics, a checkpoint folder
    stopped: Callable[[], bool]  # whether a search stopped the trial


def ray_train_context(config: dict[str, Any]) -> WorkerContext:
    """The loop's context on a Ray Train worker."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()

    def report(metrics: dict[str, float], folder: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if folder is not None:
            pause_point("checkpoint_reported", ctx.get_experiment_name())

    return WorkerContext(
        ctx.get_world_rank(),
        ctx.get_world_size(),
        ray.train.torch.get_device(),
        ray.train.torch.prepare_model,
        ray.train.get_checkpoint(),
        report,
        lambda: stop_requested(config),
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker of a frozen-features trial: its bank's shards (this combination's
    only, once per node: zero-copy views of the object store), its pseudo-labels, then
    ``train_epochs`` in Ray Train's context."""
    import ray
    import ray.train

    pause_point("worker_start", ray.train.get_context().get_experiment_name())
    started = time.time()
    trial = TrialConfig.from_dict(config)
    index: FeatureBank = ray.get(config["bank"][0])
    bank = index.fetch(index.variants_for(trial.feature_keys, trial.alignment))
    timing = {"worker_started_at": started, "time_fetch_s": time.time() - started}
    pseudo: PseudoLabels | None = None
    if trial.pseudo_labels:
        if not config.get("pseudo"):
            raise ValueError(
                "pseudo_labels=True needs an earlier search's pseudo-labels (--pseudo-labels)"
            )
        pseudo = ray.get(config["pseudo"][0])
    train_epochs(
        trial,
        bank,
        ray_train_context(config),
        pseudo,
        epoch_relay=config.get("epoch_relay"),
        predict_unlabelled=bool(config.get("predict_unlabelled")),
        timing=timing,
    )


def train_epochs(
    trial: TrialConfig,
    bank: FeatureBank,
    ctx: WorkerContext,
    pseudo: PseudoLabels | None = None,
    epoch_relay: list[Any] | None = None,
    predict_unlabelled: bool = False,
    timing: dict[str, float] | None = None,
) -> None:
    """The trial's epochs on ``bank`` (its arrays fetched): train, score the selection videos,
    report every epoch (``ctx.report``), checkpoint the improving ones with their predictions
    of every non-training split, stop early. Each report also holds ``timing`` (when the
    worker started, its bank fetch) and the seconds spent so far in the epochs (training and
    scoring) and in checkpointing and reporting (the previous epochs'): what
    ``bench/trial_overhead.py`` decomposes a trial's wall time with."""
    rank, world, device = ctx.rank, ctx.world, ctx.device
    seed_everything(trial.seed)
    train_videos, labels, valid, frame_weights, others = trial_targets(trial, bank, pseudo)
    sampler = WindowSampler(
        bank,
        trial.feature_keys,
        trial.alignment,
        trial.window,
        labels,
        valid,
        frame_weights,
        trial.video_norm,
        others,
    )
    model = create_model(
        trial.model,
        sampler.input_dims,
        trial.task,
        align=sampler.align,
        other_tasks=trial.other_tasks,
        **trial.model_args,
    )
    core = model.core
    plain = model
    model = ctx.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr, weight_decay=trial.weight_decay)
    # Class weights count the real labels only.
    weights = trial_class_weights(trial, bank.labels, bank.valid, bank.splits["train"])
    if weights is not None:
        weights = weights.to(device)
    metric = PRIMARY_METRIC[trial.task]

    # Ray Train hands back the latest (best) checkpoint when it retries a failed worker group
    # or resumes a run: continue after that epoch.
    start_epoch, best, best_epoch = resume_point(ctx.checkpoint, plain, optimizer, metric, device)

    unlabelled = [v for v in bank.splits["train"] if predict_unlabelled and not bank.valid[v].all()]
    trained_on = replace(bank, splits={**bank.splits, "train": train_videos})
    windows = training_windows(trained_on, trial.window, trial.window_stride, sampler.valid)
    draw = None
    if trial.task == "expr" and trial.balanced_sampling:
        draw = balanced_window_weights(
            windows, train_videos, trial.window, sampler.labels, sampler.valid, NUM_EXPR_CLASSES
        )
    val_videos = list(bank.splits["selection"])
    tf_epochs = trial.teacher_forcing_epochs or max(1, trial.epochs // 2)
    spent = {**(timing or {}), "time_epochs_s": 0.0, "time_checkpoint_s": 0.0}
    for epoch in range(start_epoch, trial.epochs):
        if ctx.stopped():
            break
        epoch_started = time.perf_counter()
        if hasattr(core, "teacher_forcing"):
            core.teacher_forcing = max(0.0, 1.0 - epoch / tf_epochs)
        rng = np.random.default_rng([trial.seed, epoch])
        if draw is None:
            order = rng.permutation(len(windows))
        else:  # as many windows as an epoch has, drawn with replacement
            order = rng.choice(len(windows), len(windows), p=draw)
        # Every worker takes the same number of steps (DDP all-reduces each one).
        per_worker = len(order) // world
        mine = order[rank * per_worker : (rank + 1) * per_worker]
        model.train()
        losses, aux_losses = [], []
        for b in range(0, len(mine), trial.batch_size):
            idx = windows[mine[b : b + trial.batch_size]]
            batch = sampler.batch([(train_videos[i], int(s)) for i, s in idx]).to(device)
            out = model(batch.inputs, batch.positions)
            loss = task_loss(trial, out["pred"], batch.target, batch.valid, weights, batch.weight)
            for task, (target, mask) in batch.others.items():
                other = other_task_loss(task, out["other_tasks"][task], target, mask)
                loss = loss + trial.aux_weight * other
            optimizer.zero_grad(set_to_none=True)
            (loss + out["aux_loss"]).backward()
            if trial.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), trial.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            aux_losses.append(float(out["aux_loss"].detach()))
        training_losses = core.pop_losses() if hasattr(core, "pop_losses") else {}

        val_preds = predict_videos(plain, sampler, val_videos, device)
        metrics = {
            "epoch": epoch + 1,  # 1-based: what ASHA counts
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "aux_loss": float(np.mean(aux_losses)) if aux_losses else 0.0,
            **{f"train_{k}_loss": v for k, v in training_losses.items()},
            **validation_metrics(trial.task, val_preds, val_videos, bank.labels, bank.valid),
        }
        improved = metrics[metric] > best
        if improved:
            best, best_epoch = metrics[metric], epoch
        metrics[f"best_{metric}"] = best
        metrics[TRIAL_FINISHED] = last_epoch(trial, epoch, best_epoch)
        spent["time_epochs_s"] += time.perf_counter() - epoch_started
        metrics.update(spent)
        reporting = time.perf_counter()
        if epoch_relay and rank == 0:  # a single trial's own MLflow run
            tracking.log_epoch(epoch_relay, metrics, epoch + 1)
        if ctx.stopped():  # stopped while this epoch ran: report nothing of it
            break
        if improved and rank == 0:
            predictions = {
                "selection": val_preds,
                **{
                    split: predict_videos(plain, sampler, list(bank.splits[split]), device)
                    for split in ("holdout", "test")
                },
                # The training videos with unlabelled frames: what pseudo-labels fill.
                "unlabelled": predict_videos(plain, sampler, unlabelled, device),
            }
            with tempfile.TemporaryDirectory() as tmp:
                save_trial_checkpoint(
                    Path(tmp),
                    trial,
                    plain,
                    optimizer,
                    epoch,
                    metrics,
                    predictions,
                    sampler.input_dims,
                )
                ctx.report(metrics, Path(tmp))
        else:
            ctx.report(metrics, None)
        spent["time_checkpoint_s"] += time.perf_counter() - reporting
        if metrics[TRIAL_FINISHED]:
            break
