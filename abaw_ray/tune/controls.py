"""Controls of a search's best trial (``--control``): its settings trained again on labels
shifted within each training video, masks with them (a null: the same marginals, smoothness
and gaps, no relation to the faces), and, when it trained on pseudo-labels, without them and
on them shifted. Each is trained as the trial was and stored under the search's own folder,
so a control is never taken for a search."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np
import ray

from abaw_ray import tracking
from abaw_ray.fsutil import run_stamp
from abaw_ray.tasks import PRIMARY_METRIC
from abaw_ray.train.loop import TrialConfig
from abaw_ray.train.prepare import Prepared
from abaw_ray.train.trainer import fit_in_task
from abaw_ray.tune.search import SearchConfig, TrialOutcome

CONTROLS_DIR = "controls"  # inside the search's folder, so a control is never a search


def control_runs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The controls of a trial of settings ``config``: kind -> the settings they change.
    ``control`` shifts every label the trial trains on: the real ones and, when it trains on
    pseudo-labels, those too (unshifted, they carry real signal from models trained on real
    labels). With pseudo-labels, ``no_pseudo`` and ``pseudo_shifted`` measure what they are
    worth."""
    pseudo = bool(config.get("pseudo_labels"))
    runs: dict[str, dict[str, Any]] = {
        "control": {"shift_labels": True, **({"shift_pseudo_labels": True} if pseudo else {})}
    }
    if pseudo:
        runs["no_pseudo"] = {"pseudo_labels": False}
        runs["pseudo_shifted"] = {"shift_pseudo_labels": True}
    return runs


def train_control(
    best: TrialOutcome,
    prepared: Prepared,
    cfg: SearchConfig,
    run: dict[str, str],
    changes: dict[str, Any],
    kind: str,
) -> float:
    """The best trial's settings with ``changes``, trained as the trial was (its workers, CPUs
    and GPUs, off the driver); its selection score. Every epoch reaches the MLflow run ``run``
    (``uri``, ``run_id``) through this driver."""
    trial = replace(TrialConfig.from_dict(best.config), **changes)
    with tracking.epoch_relay(run["uri"], run["run_id"]) as relay:
        found = ray.get(
            fit_in_task.options(num_cpus=cfg.driver_cpus).remote(
                asdict(trial),
                [prepared.bank_ref],
                f"{cfg.experiment_uri()}/{CONTROLS_DIR}",
                f"{kind}-{best.trial_id}-{run_stamp()}",
                [prepared.pseudo_ref] if prepared.pseudo_ref is not None else None,
                epoch_relay=relay,
                **cfg.trial_resources(),
            )
        )
    metric = PRIMARY_METRIC[trial.task]
    score = float(found[1][metric]) if found else np.nan
    status = "FAILED" if np.isnan(score) else "FINISHED"
    tracking.finish_run(run["uri"], run["run_id"], {f"best_{metric}": score}, status)
    return score


def run_controls(
    best: TrialOutcome,
    prepared: Prepared,
    cfg: SearchConfig,
    uri: str,
    experiment: str,
    parent: str,
) -> dict[str, float]:
    """Every control of the best trial (``control_runs``), each its own MLflow run under the
    search's parent; their selection scores as ``<kind>_<metric>``."""
    metric = PRIMARY_METRIC[cfg.space.task]
    scores = {}
    for kind, changes in control_runs(best.config).items():
        params = {**best.config, **changes, "controls": best.trial_id}
        run_id = tracking.child_run(uri, experiment, parent, f"{kind}-{best.trial_id}", params)
        run = {"uri": uri, "run_id": run_id}
        scores[f"{kind}_{metric}"] = train_control(best, prepared, cfg, run, changes, kind)
    return scores
