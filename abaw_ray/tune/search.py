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
import pickle
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from abaw_ray.fsutil import STAMP, run_stamp
from abaw_ray.pause import pause_point
from abaw_ray.runtime import TrialResources
from abaw_ray.tasks import PRIMARY_METRIC, TRIAL_ERROR, TRIAL_FINISHED
from abaw_ray.train.loop import TRIAL_JSON, TrialConfig
from abaw_ray.train.trainer import (
    TRIAL_DRIVER_CPU,
    cancel_train_request,
    error_tail,
    fit_trial,
    lost_worker,
)
from abaw_ray.tune.capacity import ClusterShape
from abaw_ray.tune.rounds import RoundLimiter, RoundRungs, rung_epochs
from abaw_ray.tune.space import SearchSpace

TRAINERS_DIR = "trainers"
PENDING_MIN = 2  # trials that may wait for resources even when none run yet
REDUCTION_FACTOR = 2  # ASHA keeps the better half of the trials at each rung
TUNE_STOP_WAIT_S = 300  # how long a trial whose training ended waits for Tune to stop it
RESULT_POLL_S = 0.2  # how often a trial's function looks for its trainer's results
TRAIN_RUN = "train_run"  # a trial's result: the id of the Ray Train run that reported it


@dataclass(frozen=True)
class SearchConfig:
    """Every choice of a search. Jobs' flags default to None and override these."""

    space: SearchSpace
    storage_path: str  # local folder or a URI Ray understands (s3://, gs://, a shared mount)
    name: str
    num_samples: int = 8  # trials to run
    # Optuna TPE, random sampling, or the paper's grid (GridSearcher)
    searcher: Literal["tpe", "random", "grid"] = "tpe"
    # asha: stops weak trials early; rounds: ASHA and the searcher in rounds of trials at
    # once, so the same seed gives the same trials (tune/rounds.py); none: no early stop;
    # auto: rounds on a job's own instance, asha on a cluster (trials paced to its autoscaler)
    scheduler: Literal["auto", "asha", "rounds", "none"] = "auto"
    max_concurrent: int | None = None  # trials at once at most (None: no cap but the pacing)
    # the job started its own Ray: no autoscaler grows it (no trial waits for one) and no
    # head is to be spared (trial drivers ask for no CPU)
    local_instance: bool = False
    resources: TrialResources = TrialResources()  # what each trial asks for
    time_budget_s: float | None = None  # seconds after which no new trial starts
    max_failures: int = 2  # times a trial is retried after losing a node (Tune and Train)
    grace_period: int = 3  # epochs before ASHA may stop a trial
    top_k: int = 5  # best trials offered to the ensemble
    ensemble: str = "greedy"  # how the ensemble weighs them (ensemble.list_ensemble_methods)
    holdout: float = 1 / 3  # validation videos nothing selects on: a fraction, a count, or 0
    seed: int = 0
    # what an autoscaler can grow the cluster to (capacity.cluster_shape); None: unknown
    largest: ClusterShape | None = None

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.space.task]

    @property
    def scheduler_used(self) -> str:
        """The scheduler the search runs with: ``scheduler``, with auto resolved."""
        if self.scheduler != "auto":
            return self.scheduler
        return "rounds" if self.local_instance else "asha"

    def experiment_uri(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def trainers_uri(self) -> str:
        return f"{self.experiment_uri()}/{TRAINERS_DIR}"

    @property
    def driver_cpus(self) -> float:
        """The CPU share of a trial's driver processes (``TRIAL_DRIVER_CPU``)."""
        return 0.0 if self.local_instance else TRIAL_DRIVER_CPU

    def trial_resources(self) -> dict[str, Any]:
        """``build_trainer``'s resource settings for a trial of this search: its workers,
        each with its share of the trial's GPUs, its CPUs, and the retries after a lost
        worker. Controls and folds train with the same."""
        return {
            "workers": self.resources.workers,
            "gpus_per_worker": self.resources.gpus / self.resources.workers,
            "cpus_per_worker": self.resources.cpus_per_worker,
            "max_failures": self.max_failures,
        }


@dataclass
class TrialOutcome:
    trial_id: str
    config: dict[str, Any]
    status: str
    best: dict[str, float] | None = None  # metrics of the best (checkpointed) epoch
    checkpoint: str | None = None  # URI of that checkpoint
    last: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the last lines of the error it ended with, if one
    number: int = 0  # Tune's number for it, in the order the searcher proposed (0: unknown)

    @property
    def score(self) -> float:
        return float("-inf") if not self.best else float(self.best.get("_score", float("-inf")))


@ray.remote(num_cpus=0)
class StopFlag:
    """Set when Tune ends the trial that owns it (``StopRelay``, a callback of the driver);
    the trial's workers read it each epoch (``stop_requested``). It dies with its trial,
    which the workers read as a stop too. It also carries the trial's results from its Train
    controller (``results_to_trial``) to the trial's function (``run_trial``), which alone
    reports them to Tune."""

    def __init__(self) -> None:
        self.stopped = False
        self.results: list[dict[str, Any]] = []

    def set(self) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped

    def post(self, result: dict[str, Any]) -> None:
        self.results.append(result)

    def collect(self) -> list[dict[str, Any]]:
        """The results posted since the last call, oldest first."""
        results, self.results = self.results, []
        return results


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """What MLflow records of a trial: every setting it trained with, its model's defaults
    included (a sampled config holds only what the space sets)."""
    return TrialConfig.from_dict(config).settings()


def stop_flag_name(trial_id: str) -> str:
    return f"abaw-stop-{trial_id}"


def stop_relay() -> Any:
    """A Tune callback (it runs in the search's driver) that sets a trial's ``StopFlag`` when
    Tune ends the trial: ASHA, the time budget, its last result, an error. It also withdraws
    the trial's Train autoscaler request: Tune's ending the trial actor kills the Train
    controller it owns before that controller withdraws it (a trial stopped mid-run; a trial
    that reached its last result has withdrawn it already, ``run_trial``)."""
    from ray.tune import Callback

    class StopRelay(Callback):
        def _stop(self, trial: Any) -> None:
            try:
                ray.get_actor(stop_flag_name(trial.trial_id)).set.remote()
            except ValueError:
                pass  # the trial's flag is gone with it
            self._withdraw(trial)

        def _withdraw(self, trial: Any) -> None:
            run_id = (trial.last_result or {}).get(TRAIN_RUN)
            if run_id:
                cancel_train_request(run_id)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._stop(trial)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._stop(trial)

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            self._withdraw(trial)  # its node was lost: the rerun's controller asks anew

    return StopRelay()


def results_to_trial(stop_flag: Any) -> Any:
    """A Ray Train callback (it runs in the trial's Train controller) that posts rank 0's
    results, each with its Train run's id (``TRAIN_RUN``), to the trial's ``StopFlag``.
    Defined in here, the controller unpickles it without importing this module."""
    from ray.train import UserCallback
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    class ResultsToTrial(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            result = {**metrics[0], TRAIN_RUN: run_context.run_id}
            if checkpoint:
                result[CHECKPOINT_PATH_KEY] = checkpoint.path
            ray.get(stop_flag.post.remote(result))

    return ResultsToTrial()


def report_while_fitting(
    fitting: threading.Thread,
    collect: Callable[[], list[dict[str, Any]]],
    report: Callable[[dict[str, Any]], Any],
) -> dict[str, Any] | None:
    """``report`` each result that ``collect`` returns (oldest first) until ``fitting`` has
    ended and every result it posted is collected, except the last (``TRIAL_FINISHED``),
    which is returned (None when there was none) for the caller to report afterwards."""
    last = None
    while True:
        fitting.join(timeout=RESULT_POLL_S)
        done = not fitting.is_alive()  # read first: nothing posted before it is missed
        for result in collect():
            if result.get(TRIAL_FINISHED):
                last = result
            else:
                report(result)  # Tune's: returns when Tune asks for the next result
        if done:
            return last


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
    """The Tune function trainable: one TorchTrainer, fitted in a thread of its own, whose
    rank-0 results this function reports to Tune as they come (``results_to_trial``), the
    last (``TRIAL_FINISHED``) once the trainer has returned. The trainer's name is the Tune
    trial id, so a restored search finds and resumes the same Train run. When Tune ends the
    trial (ASHA, the time budget, an interrupt) its workers stop before their next epoch or
    checkpoint (its ``StopFlag``). A lost worker is retried (``fit_trial``), an error of the
    training code is not: the trial reports it (``TRIAL_ERROR``) and ends.

    Only this function's thread reports: Ray's own relay (``TuneReportCallback``) hands Tune
    the controller's results from the actor's main thread, and a result it relays while this
    thread's return is reported deadlocks the trial. The last result waits for the trainer:
    Tune ends a trial on it by ending the trial's actor, and with it the Train controller
    that actor owns; a controller still shutting down would leave its autoscaler request
    behind, holding nodes for 180 s (bench/autoscaler_requests.py)."""
    trial_id = tune.get_context().get_trial_id()
    # Beside this trial's driver, never wherever a 0-CPU actor happens to land (the head);
    # named, so the driver's StopRelay finds it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    stop_flag = StopFlag.options(
        name=stop_flag_name(trial_id), get_if_exists=True, scheduling_strategy=here
    ).remote()

    def stopped() -> bool:
        return ray.get(stop_flag.is_set.remote())

    if pause_point("trial_start", trial_id, stopped) and stopped():
        return
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            fit_trial(
                max_failures=max_failures,
                trial=TrialConfig.from_dict(config),
                data_ref=bank_ref[0],
                storage_path=trainers_uri,
                name=f"train-{trial_id}",
                workers=workers,
                gpus_per_worker=gpus_per_worker,
                cpus_per_worker=cpus_per_worker,
                callbacks=[results_to_trial(stop_flag)],
                stop_flag=stop_flag,
                keep_checkpoints=None,  # a stopped trial's last epochs must not evict what Tune saw
                pseudo_ref=pseudo_ref[0] if pseudo_ref else None,
                predict_unlabelled=predict_unlabelled,
            )
        except BaseException as err:  # raised in this function's thread, below
            outcome["error"] = err

    fitting = threading.Thread(target=fit, name=f"fit-{trial_id}", daemon=True)
    fitting.start()
    last = report_while_fitting(fitting, lambda: ray.get(stop_flag.collect.remote()), tune.report)
    err = outcome.get("error")
    if isinstance(err, ray.train.TrainingFailedError) and not lost_worker(err):
        last = {TRIAL_ERROR: error_tail(err), TRIAL_FINISHED: 1}
    elif err is not None:
        raise err  # a lost worker: Tune runs the trial again (it resumes from a checkpoint)
    if last is not None:  # None: Tune stopped the trial before its last epoch
        tune.report(last)
    # Tune ends the trial on its last result (TRIAL_FINISHED): return once it has read it,
    # never with a result in flight (Tune's function session then waits forever).
    deadline = time.time() + TUNE_STOP_WAIT_S
    while not stopped() and time.time() < deadline:
        time.sleep(0.2)


def _max_epochs(space: SearchSpace) -> int:
    for p in space.parameters:
        if p.name == "epochs":
            return int(
                max(p.args) if p.kind == "choice" else p.args[1] if p.kind == "randint" else p.args
            )
    return TrialConfig().epochs


def workers_on(resources: dict[str, float], cfg: SearchConfig) -> int:
    """How many of a trial's Train workers a node with ``resources`` holds: CPUs for each and
    its share of the driver's, GPUs at each worker's share of the trial's."""
    res = cfg.resources
    cpus = res.cpus_per_worker + cfg.driver_cpus / res.workers
    gpus = res.gpus / res.workers
    fit = int(resources.get("CPU", 0) // max(cpus, 1e-6))
    if gpus:
        fit = min(fit, int(resources.get("GPU", 0) // gpus))
    return fit


def trials_fitting(nodes: list[dict[str, Any]], cfg: SearchConfig) -> int:
    """How many trials the alive ``nodes`` (``ray.nodes()``) hold at once, node by node (a
    Train worker does not span nodes)."""
    workers = sum(workers_on(n.get("Resources", {}), cfg) for n in nodes if n.get("Alive"))
    return workers // cfg.resources.workers


def trials_at_most(cfg: SearchConfig) -> int | None:
    """How many trials the cluster holds at once at its largest (None: its size is unknown)."""
    if cfg.largest is None:
        return None
    return cfg.largest.most(lambda r: workers_on(r, cfg)) // cfg.resources.workers


def trials_at_once(cfg: SearchConfig, fit: int) -> int:
    """Trials to have in flight when the cluster holds ``fit`` of them now: those, plus as
    many waiting for resources (at least ``PENDING_MIN``): what makes an autoscaler launch
    nodes, doubling the cluster a round as its own ``upscaling_speed`` 1 does. Never more than
    the cluster holds at its largest (``cfg.largest``), so that no trial waits for nodes the
    autoscaler cannot add and the searcher learns from every result it could have; ``fit``
    above it (a lost node the GCS still lists beside its replacement) is not believed. None
    wait on a job's own local instance, which nothing grows. Never more than
    ``--concurrency``."""
    waiting = 0 if cfg.local_instance else max(PENDING_MIN, fit)
    at_once = fit + waiting
    most = trials_at_most(cfg)
    if most is not None:
        at_once = min(at_once, most)
    at_once = max(1, at_once)
    return min(at_once, cfg.max_concurrent) if cfg.max_concurrent else at_once


def round_size(cfg: SearchConfig, fit: int) -> int:
    """Trials in a round of a search in rounds: ``--concurrency``, else what the cluster holds
    at its largest, else what it holds now (``fit``; a job's own instance, which nothing
    grows). Fixed for the whole search, so the same seed gives the same rounds."""
    return max(1, cfg.max_concurrent or trials_at_most(cfg) or fit)


class PacedLimiter(ConcurrencyLimiter):
    """Tune's ``ConcurrencyLimiter`` with a limit read from the cluster each time Tune asks
    for a trial (``trials_at_once`` of what the cluster holds now): it grows as an autoscaler
    adds nodes and never hands out every sample at once, so the searcher (TPE) learns from
    finished trials while it proposes new ones."""

    def __init__(self, searcher: Any, cfg: SearchConfig) -> None:
        super().__init__(searcher, max_concurrent=max(1, cfg.max_concurrent or cfg.num_samples))
        self.pacing = cfg  # what the limit is computed from (saved with the searcher's state)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        fit = trials_fitting(ray.nodes(), self.pacing)
        self.max_concurrent = trials_at_once(self.pacing, fit)
        return super().suggest(trial_id)


class GridSearcher(Searcher):
    """The paper's protocol: ``rows`` (``SearchSpace.grid``) in order with trial seed
    ``seed`` (the search's), then again with the next (``seed`` + 1, + 2, ...), as a user's
    script loops over combinations, models and seeds. Its state, the next row's number, is
    saved with the search (resume continues)."""

    def __init__(self, rows: list[dict[str, Any]], metric: str, seed: int = 0) -> None:
        super().__init__(metric=metric, mode="max")
        self.rows = rows
        self.seed = seed
        self.proposed = 0

    def suggest(self, trial_id: str) -> dict[str, Any]:
        row, rounds = self.rows[self.proposed % len(self.rows)], self.proposed // len(self.rows)
        self.proposed += 1
        return {**row, "seed": self.seed + rounds}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            state = {"rows": self.rows, "seed": self.seed, "proposed": self.proposed}
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


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
        **cfg.trial_resources(),
        pseudo_ref=[pseudo_ref] if pseudo_ref is not None else None,
        predict_unlabelled=predict_unlabelled,
    )
    # The function trainable only drives the trainer; the trainer's workers hold the CPUs and
    # GPUs. Its bundle asks for a sliver of CPU on a cluster (a 0-CPU head never takes it)
    # and none on a local instance (no share a worker needs); "memory" as Ray needs one
    # non-zero resource in a bundle.
    bundle = {"CPU": cfg.driver_cpus} if cfg.driver_cpus else {"CPU": 0, "memory": 1e6}
    trainable = tune.with_resources(trainable, tune.PlacementGroupFactory([bundle]))
    # Tune saves its experiment state (trials, searcher) at most every 10 s by default: a
    # trial started since the last save is unknown to a resumed search, which would replace it
    # by a new one. Saving at every controller step keeps resume exact; the state is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # PacedLimiter bounds the trials in flight; Tune's own bound on trials waiting for their
    # placement group would otherwise be frozen at the limiter's first value.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(1, cfg.num_samples)))
    # A failed trial's last result holds its error and no score (TRIAL_ERROR).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if resume:
        # The first run's callbacks come back unpickled: they find this process's console
        # (CONSOLE_FD_ENV) and continue their counts.
        return tune.Tuner.restore(
            cfg.experiment_uri(), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    if cfg.searcher == "grid":
        proposer: Searcher = GridSearcher(cfg.space.grid(combos), cfg.metric, cfg.seed)
    else:
        sampler = (
            optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(4, cfg.num_samples))
            if cfg.searcher == "tpe"
            else optuna.samplers.RandomSampler(seed=cfg.seed)
        )
        proposer = OptunaSearch(
            space=cfg.space.define_by_run(combos), metric=cfg.metric, mode="max", sampler=sampler
        )
    max_t = _max_epochs(cfg.space)
    grace_period = min(cfg.grace_period, max_t)  # a short search (smoke): all it has
    if cfg.scheduler_used == "rounds":
        fit = trials_fitting(ray.nodes(), cfg)
        searcher = RoundLimiter(
            proposer,
            round_size(cfg, fit),
            rung_epochs(grace_period, max_t, REDUCTION_FACTOR),
            REDUCTION_FACTOR,
        )
        scheduler = RoundRungs(metric=cfg.metric)
    else:
        searcher = PacedLimiter(proposer, cfg)
        scheduler = (
            ASHAScheduler(
                time_attr="epoch",
                max_t=max_t,
                grace_period=grace_period,
                reduction_factor=REDUCTION_FACTOR,
            )
            if cfg.scheduler_used == "asha"
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
            time_budget_s=cfg.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            callbacks=[*(callbacks or []), stop_relay()],
            verbose=verbose,
            stop={TRIAL_FINISHED: 1},  # a trial's last result (its epochs or patience spent)
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
    """The default name of a search: its task and ``run_stamp`` (sorts by start time; unique
    among jobs started in the same second)."""
    return f"search_{task}-{run_stamp(started)}"


def latest_search(storage_path: str, task: str) -> str | None:
    """The most recently started search of ``task`` under ``storage_path`` that Tune can
    restore. Only default search names count: a control run or any other folder never does."""
    fs, root = _filesystem(storage_path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    # Names before run_stamp had no random part.
    pattern = re.compile(rf"search_{task}-({STAMP}|\d{{8}}-\d{{6}})")
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and pattern.fullmatch(i.base_name)
    )
    base = storage_path.rstrip("/")
    restorable = [n for n in names if tune.Tuner.can_restore(f"{base}/{n}")]
    return restorable[-1] if restorable else None


def best_checkpoint(
    trainer_uri: str,
    metric: str,
    last_epoch: int | None = None,
    warn: Callable[[str], None] = print,
) -> tuple[dict[str, float], str] | None:
    """The best checkpoint a trial's trainer kept, of the epochs up to ``last_epoch`` (the
    last one Tune recorded; None: all): (its metrics, its URI). A checkpoint whose
    ``trial.json`` cannot be read is named (``warn``) and skipped."""
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
            metrics = saved["metrics"]
            score, epoch = float(metrics[metric]), int(metrics["epoch"])
        except FileNotFoundError:
            continue  # a checkpoint being written when the search was killed
        except (OSError, ValueError, KeyError, TypeError) as err:
            warn(f"warning: skipped a corrupt checkpoint, {info.path}/{TRIAL_JSON}: {err}")
            continue
        if last_epoch is not None and epoch > last_epoch:
            continue  # finished after Tune stopped the trial: Tune and MLflow never saw it
        if best is None or score > best[0][metric]:
            prefix = trainer_uri.split("://")[0] + "://" if "://" in trainer_uri else ""
            best = (metrics, f"{prefix}{info.path}" if prefix else info.path)
    return best


def trial_folder_name(path: str) -> tuple[str, int]:
    """A trial's id and Tune's number for it (its counter: the order the searcher proposed
    trials in, kept by a resumed search) from the name of its folder, which Tune writes as
    ``run_trial_<id>_<number>_<settings>_<date>``; ("", 0) for another name."""
    found = re.match(rf"{run_trial.__name__}_([0-9a-f]+)_(\d+)_", Path(path).name)
    return (found.group(1), int(found.group(2))) if found else ("", 0)


def collect_outcomes(
    cfg: SearchConfig, results: tune.ResultGrid, warn: Callable[[str], None] = print
) -> list[TrialOutcome]:
    """Every trial's settings, status (its error, if one) and best checkpoint, best first;
    ``warn``: where a corrupt checkpoint is named."""
    outcomes = []
    for r in results:
        folder_id, number = trial_folder_name(r.path)
        trial_id = (r.metrics or {}).get("trial_id") or folder_id
        error = (r.metrics or {}).get(TRIAL_ERROR) or (str(r.error).strip() if r.error else None)
        status = "error" if error else "done"
        last_epoch = (r.metrics or {}).get("epoch")
        found = best_checkpoint(
            f"{cfg.trainers_uri()}/train-{trial_id}", cfg.metric, last_epoch, warn
        )
        config = {k: v for k, v in (r.config or {}).items()}
        outcome = TrialOutcome(
            trial_id,
            config,
            status,
            last=dict(r.metrics or {}),
            error=error and error[-500:],
            number=number,
        )
        if found:
            outcome.best = {**found[0], "_score": found[0][cfg.metric]}
            outcome.checkpoint = found[1]
        outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: o.score, reverse=True)
