"""The search: Ray Tune over a YAML search space, each trial a Ray Train ``TorchTrainer``.

Optuna TPE (or random sampling) proposes trials from the define-by-run space; ASHA stops the
weak ones early, counting the reported ``epoch`` (Tune's own iteration counter restarts after
a restore); a concurrency limit and per-trial resources pack small trials, fractional GPUs
included. A killed search resumes with ``resume=True``: finished trials are kept, unfinished
ones continue from their last checkpoint (same storage path and trainer names).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs
import ray
from ray import tune

from abaw_ray.tasks import PRIMARY_METRIC
from abaw_ray.train.loop import TRIAL_JSON, TrialConfig
from abaw_ray.train.trainer import build_trainer
from abaw_ray.tune.space import SearchSpace

TRAINERS_DIR = "trainers"


@dataclass(frozen=True)
class SearchConfig:
    """Every choice of a search. Jobs' flags default to None and override these."""

    space: SearchSpace
    storage_path: str  # local folder or a URI Ray understands (s3://, gs://, a shared mount)
    name: str
    num_samples: int = 8  # trials to run
    searcher: Literal["tpe", "random"] = "tpe"  # Optuna TPE, or random sampling
    scheduler: Literal["asha", "none"] = "asha"  # ASHA stops weak trials early
    max_concurrent: int | None = None  # trials at once (None: what the cluster fits)
    workers_per_trial: int = 1  # data-parallel Ray Train workers of each trial
    gpus_per_trial: float = 0.0  # fractions pack several small trials on a GPU
    cpus_per_worker: float = 1.0
    time_budget_s: float | None = None  # seconds after which no new trial starts
    max_failures: int = 2  # times a trial is retried after losing a node (Tune and Train)
    grace_period: int = 3  # epochs before ASHA may stop a trial
    top_k: int = 5  # best trials offered to the ensemble
    holdout: float = 1 / 3  # validation videos nothing selects on: a fraction, a count, or 0
    seed: int = 0

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.space.task]

    def experiment_uri(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def trainers_uri(self) -> str:
        return f"{self.experiment_uri()}/{TRAINERS_DIR}"


@dataclass
class TrialOutcome:
    trial_id: str
    config: dict[str, Any]
    status: str
    best: dict[str, float] | None = None  # metrics of the best (checkpointed) epoch
    checkpoint: str | None = None  # URI of that checkpoint
    last: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return float("-inf") if not self.best else float(self.best.get("_score", float("-inf")))


@ray.remote(num_cpus=0)
class StopFlag:
    """Set when Tune stops the trial that owns it; the trial's workers read it each epoch
    (``stop_requested``). It dies with its trial, which the workers read as a stop too."""

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped


def run_trial(
    config: dict[str, Any],
    bank_ref: list[ray.ObjectRef],
    trainers_uri: str,
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float,
    max_failures: int,
    pseudo_ref: list[ray.ObjectRef] | None = None,
    predict_unlabelled: bool = False,
) -> None:
    """The Tune function trainable: one TorchTrainer whose rank-0 reports reach Tune through
    ``TuneReportCallback``. The trainer's name is the Tune trial id, so a restored search
    finds and resumes the same Train run. When Tune stops the trial (ASHA, the time budget,
    an interrupt) its workers stop before their next epoch or checkpoint: Tune sets the
    session's stop event, which a thread relays to the workers' ``StopFlag``."""
    from ray.train._internal.session import get_session
    from ray.tune.integration.ray_train import TuneReportCallback

    stop_flag = StopFlag.remote()
    stop_event = get_session().stop_event

    def relay_stop() -> None:
        stop_event.wait()
        stop_flag.set.remote()

    threading.Thread(target=relay_stop, daemon=True).start()
    trial = TrialConfig.from_dict(config)
    trainer = build_trainer(
        trial,
        bank_ref[0],
        trainers_uri,
        name=f"train-{tune.get_context().get_trial_id()}",
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        callbacks=[TuneReportCallback()],
        max_failures=max_failures,
        stop_flag=stop_flag,
        keep_checkpoints=None,  # a stopped trial's last epochs must not evict what Tune saw
        pseudo_ref=pseudo_ref[0] if pseudo_ref else None,
        predict_unlabelled=predict_unlabelled,
    )
    trainer.fit()


def _max_epochs(space: SearchSpace) -> int:
    for p in space.parameters:
        if p.name == "epochs":
            return int(
                max(p.args) if p.kind == "choice" else p.args[1] if p.kind == "randint" else p.args
            )
    return TrialConfig().epochs


def default_concurrency(cfg: SearchConfig) -> int:
    """As many trials as the cluster fits now; on a cluster that fits none (an autoscaling
    one whose workers are all down, its head offering no CPU) every trial, so that the
    pending trials make the autoscaler launch workers (``--concurrency`` caps it)."""
    res = ray.cluster_resources()
    by_cpu = int(res.get("CPU", 0) // max(cfg.workers_per_trial * cfg.cpus_per_worker, 1e-6))
    if by_cpu == 0:
        return cfg.num_samples
    limit = by_cpu
    if cfg.gpus_per_trial:
        limit = min(limit, int(res.get("GPU", 0) // cfg.gpus_per_trial) or 1)
    return max(1, min(limit, cfg.num_samples))


def build_tuner(
    cfg: SearchConfig,
    bank_ref: ray.ObjectRef,
    combos: list[str],
    callbacks: list[Any] | None = None,
    resume: bool = False,
    verbose: int = 1,
    pseudo_ref: ray.ObjectRef | None = None,
    predict_unlabelled: bool = False,
) -> tune.Tuner:
    """The search's Tuner. ``pseudo_ref``: an earlier search's pseudo-labels, for trials with
    ``pseudo_labels``; ``predict_unlabelled``: trials also predict the training videos'
    unlabelled frames (this search will make pseudo-labels)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_parameters(
        run_trial,
        bank_ref=[bank_ref],
        trainers_uri=cfg.trainers_uri(),
        workers=cfg.workers_per_trial,
        gpus_per_worker=cfg.gpus_per_trial / cfg.workers_per_trial,
        cpus_per_worker=cfg.cpus_per_worker,
        max_failures=cfg.max_failures,
        pseudo_ref=[pseudo_ref] if pseudo_ref is not None else None,
        predict_unlabelled=predict_unlabelled,
    )
    # The function trainable only drives the trainer; the trainer's workers hold the CPUs and
    # GPUs. A zero-CPU bundle (with a token of memory, as Ray needs one non-zero resource)
    # keeps the driver from taking the share that a worker needs.
    trainable = tune.with_resources(
        trainable, tune.PlacementGroupFactory([{"CPU": 0, "memory": 1e6}])
    )
    # Tune saves its experiment state (trials, searcher) at most every 10 s by default: a
    # trial started since the last save is unknown to a resumed search, which would replace it
    # by a new one. Saving at every controller step keeps resume exact; the state is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    if resume:
        tuner = tune.Tuner.restore(
            cfg.experiment_uri(), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        # Restore brings back the callbacks pickled by the first run (their console and
        # counters); this process's own take their place.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    sampler = (
        optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(4, cfg.num_samples))
        if cfg.searcher == "tpe"
        else optuna.samplers.RandomSampler(seed=cfg.seed)
    )
    searcher = OptunaSearch(
        space=cfg.space.define_by_run(combos), metric=cfg.metric, mode="max", sampler=sampler
    )
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=_max_epochs(cfg.space),
            grace_period=cfg.grace_period,
            reduction_factor=2,
        )
        if cfg.scheduler == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent or default_concurrency(cfg),
            time_budget_s=cfg.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            callbacks=callbacks,
            verbose=verbose,
            # A trial whose driving actor dies with its node is run again; its trainer, same
            # name and storage, continues from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        ),
    )


def can_resume(cfg: SearchConfig) -> bool:
    return tune.Tuner.can_restore(cfg.experiment_uri())


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        uri = str(Path(uri).resolve())
    return pafs.FileSystem.from_uri(uri)


def search_name(task: str, started: float) -> str:
    """The default name of a search: its task and start time (sorts by time)."""
    return f"search_{task}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}"


def latest_search(storage_path: str, task: str) -> str | None:
    """The most recently started search of ``task`` under ``storage_path`` that Tune can
    restore. Only default search names count: a control run or any other folder never does."""
    fs, root = _filesystem(storage_path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    pattern = re.compile(rf"search_{task}-\d{{8}}-\d{{6}}")
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and pattern.fullmatch(i.base_name)
    )
    base = storage_path.rstrip("/")
    restorable = [n for n in names if tune.Tuner.can_restore(f"{base}/{n}")]
    return restorable[-1] if restorable else None


def best_checkpoint(
    trainer_uri: str, metric: str, last_epoch: int | None = None
) -> tuple[dict[str, float], str] | None:
    """The best checkpoint a trial's trainer kept, of the epochs up to ``last_epoch`` (the
    last one Tune recorded; None: all): (its metrics, its URI)."""
    fs, root = _filesystem(trainer_uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    best = None
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{TRIAL_JSON}") as fh:
                saved = json.loads(fh.read())
        except (OSError, FileNotFoundError):
            continue  # a checkpoint being written when the search was killed
        metrics = saved["metrics"]
        if last_epoch is not None and metrics["epoch"] > last_epoch:
            continue  # finished after Tune stopped the trial: Tune and MLflow never saw it
        if best is None or metrics[metric] > best[0][metric]:
            prefix = trainer_uri.split("://")[0] + "://" if "://" in trainer_uri else ""
            best = (metrics, f"{prefix}{info.path}" if prefix else info.path)
    return best


def collect_outcomes(cfg: SearchConfig, results: tune.ResultGrid) -> list[TrialOutcome]:
    outcomes = []
    for r in results:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name.split("_")[-2]
        status = "error" if r.error else "done"
        last_epoch = (r.metrics or {}).get("epoch")
        found = best_checkpoint(f"{cfg.trainers_uri()}/train-{trial_id}", cfg.metric, last_epoch)
        config = {k: v for k, v in (r.config or {}).items()}
        outcome = TrialOutcome(trial_id, config, status, last=dict(r.metrics or {}))
        if found:
            outcome.best = {**found[0], "_score": found[0][cfg.metric]}
            outcome.checkpoint = found[1]
        outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: o.score, reverse=True)
