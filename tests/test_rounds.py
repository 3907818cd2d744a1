"""A search in rounds (``--scheduler rounds``, tune/rounds.py): whatever order trials report
and end in, the searcher proposes the same trials and ASHA stops them at the same epochs."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator

from abaw_ray.tune.rounds import RoundLimiter, RoundRungs, rung_epochs
from abaw_ray.tune.search import SearchConfig, round_size, trial_folder_name
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Heard(Searcher):
    """A searcher that proposes its trial's id and lists the trials it heard end."""

    def __init__(self) -> None:
        super().__init__(metric="score", mode="max")
        self.heard: list[str] = []

    def suggest(self, trial_id: str) -> dict:
        return {"id": trial_id}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.heard.append(trial_id)


def test_rungs_are_ashas_below_the_last_epoch():
    assert rung_epochs(3, 16, 2) == [3, 6, 12]
    assert rung_epochs(3, 12, 2) == [3, 6]  # at 12 the trial has ended anyway
    assert rung_epochs(2, 2, 2) == []  # a smoke search: nothing to stop early
    assert rung_epochs(1, 30, 3) == [1, 3, 9, 27]


def test_the_searcher_hears_a_round_only_once_all_its_trials_ended():
    inner = Heard()
    rounds = RoundLimiter(inner, size=2, rungs=[3], reduction_factor=2)
    assert rounds.suggest("a") == {"id": "a"} and rounds.suggest("b") == {"id": "b"}
    assert rounds.suggest("c") is None  # the round is full
    rounds.on_trial_complete("b", {"score": 1.0})
    assert inner.heard == [] and rounds.suggest("c") is None and rounds.round == 0
    rounds.on_trial_complete("a", {"score": 2.0})
    assert sorted(inner.heard) == ["a", "b"] and rounds.round == 1
    assert rounds.suggest("c") == {"id": "c"}
    assert rounds.round_of == {"a": 0, "b": 0, "c": 1}


def _two_rounds() -> RoundLimiter:
    rounds = RoundLimiter(Heard(), size=2, rungs=[3, 6], reduction_factor=2)
    for trial in ("a", "b"):
        rounds.suggest(trial)
    return rounds


def test_a_trial_is_stopped_only_against_earlier_rounds_in_any_order():
    decisions = []
    for order in (("c", "d", "e"), ("e", "d", "c")):
        rounds = _two_rounds()
        # Round 0 has nothing before it: b is not stopped, although async ASHA would stop it
        # against a (0.3 below 0.5).
        assert rounds.should_stop("a", 3, 0.5) is False
        assert rounds.should_stop("b", 3, 0.3) is False
        rounds.on_trial_complete("a", {"score": 0.5})
        rounds.on_trial_complete("b", {"score": 0.3})
        rounds.max_concurrent = 3  # a larger round, to see three trials of round 1 together
        for trial in ("c", "d", "e"):
            rounds.suggest(trial)
        # Round 1's cutoff at epoch 3: the median of a's and b's 0.5 and 0.3, 0.4. Counting
        # round 1's own results (async ASHA), d's 0.42 would be stopped after c's 0.45.
        scores = {"c": 0.45, "d": 0.42, "e": 0.35}
        decisions.append({t: rounds.should_stop(t, 3, scores[t]) for t in order})
    assert decisions[0] == decisions[1] == {"c": False, "d": False, "e": True}


def test_only_the_first_report_at_a_rung_counts_and_a_resumed_trial_records_its_next_rung():
    rounds = _two_rounds()
    rounds.should_stop("a", 3, 0.9)
    rounds.should_stop("b", 3, 0.8)
    rounds.should_stop("a", 6, 0.9)
    rounds.on_trial_complete("a")
    rounds.on_trial_complete("b")
    rounds.suggest("c")
    assert rounds.should_stop("c", 3, 0.1) is True
    assert rounds.should_stop("c", 4, 0.1) is False  # rung 3 was decided; 4 is no rung
    # A trial resumed from its epoch-5 checkpoint reports 7 first: it is judged at rung 6.
    rounds.suggest("d")
    assert rounds.records[3].get("d") is None
    assert rounds.should_stop("d", 7, 0.95) is False and rounds.records[6]["d"] == 0.95
    assert rounds.should_stop("d", 7, 0.1) is False  # already recorded there


def test_the_scheduler_asks_the_searchs_round_limiter_through_tunes_wrappers():
    rounds = _two_rounds()
    rounds.should_stop("a", 3, 0.5)
    rounds.on_trial_complete("a")
    rounds.on_trial_complete("b")
    rounds.suggest("c")
    controller = SimpleNamespace(search_alg=SearchGenerator(rounds))
    scheduler = RoundRungs(metric="score")

    def decide(trial_id: str, result: dict) -> str:
        return scheduler.on_trial_result(controller, SimpleNamespace(trial_id=trial_id), result)

    assert decide("c", {"epoch": 2, "score": 0.1}) == TrialScheduler.CONTINUE  # before rung 3
    assert decide("c", {"epoch": 3}) == TrialScheduler.CONTINUE  # an error's result: no score
    assert decide("c", {"epoch": 3, "score": 0.1}) == TrialScheduler.STOP
    plain = SimpleNamespace(search_alg=SearchGenerator(ConcurrencyLimiter(Heard(), 2)))
    with pytest.raises(TypeError, match="RoundLimiter"):
        scheduler.on_trial_result(plain, SimpleNamespace(trial_id="c"), {"epoch": 3, "score": 1})


def test_the_rung_records_are_saved_with_the_searchers_state(tmp_path):
    def tpe() -> OptunaSearch:
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
        return OptunaSearch(space=_space, metric="score", mode="max", sampler=sampler)

    first = RoundLimiter(tpe(), size=2, rungs=[3], reduction_factor=2)
    generator = SearchGenerator(first)
    generator.set_search_properties("score", "max", {})
    for trial in ("a", "b"):
        first.suggest(trial)
    for trial in ("a", "b"):
        first.should_stop(trial, 3, {"a": 0.2, "b": 0.6}[trial])
        first.on_trial_complete(trial, {"score": 0.5})
    generator.save_to_dir(str(tmp_path), session_str="s")

    resumed = RoundLimiter(tpe(), size=2, rungs=[3], reduction_factor=2)
    SearchGenerator(resumed).restore_from_dir(str(tmp_path))
    assert resumed.round == 1 and resumed.records == {3: {"a": 0.2, "b": 0.6}}
    resumed.suggest("c")
    assert resumed.should_stop("c", 3, 0.39) is True  # below the median of 0.2 and 0.6


def _space(trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("width", [16, 32, 64])


def _curve(config: dict, epoch: int) -> float:
    """A deterministic learning curve: best near lr 0.01 and width 32."""
    import math

    quality = -abs(math.log10(config["lr"]) + 2) - abs(config["width"] - 32) / 32
    return quality * (1 - 0.5 ** (epoch / 3))


def _simulate(order_seed: int, samples: int = 12, size: int = 3, epochs: int = 12) -> list:
    """A search in rounds whose trials report their epochs interleaved in a random order:
    what each trial was proposed with and the epoch it ended at, in the order proposed."""
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=4)
    searcher = OptunaSearch(space=_space, metric="score", mode="max", sampler=sampler)
    rounds = RoundLimiter(searcher, size=size, rungs=rung_epochs(3, epochs, 2), reduction_factor=2)
    SearchGenerator(rounds).set_search_properties("score", "max", {})
    controller = SimpleNamespace(search_alg=SearchGenerator(rounds))
    scheduler = RoundRungs(metric="score")
    shuffle = random.Random(order_seed)
    proposed, ended, epoch_of, live = {}, {}, {}, []
    while len(ended) < samples:
        while len(proposed) < samples:
            trial_id = f"t{len(proposed):02d}"
            config = rounds.suggest(trial_id)
            if config is None:
                break
            proposed[trial_id], epoch_of[trial_id] = config, 0
            live.append(trial_id)
        trial_id = shuffle.choice(live)  # whichever trial the machine runs next
        epoch_of[trial_id] += 1
        epoch = epoch_of[trial_id]
        result = {
            "epoch": epoch,
            "training_iteration": epoch,
            "score": _curve(proposed[trial_id], epoch),
        }
        rounds.on_trial_result(trial_id, result)
        stop = scheduler.on_trial_result(controller, SimpleNamespace(trial_id=trial_id), result)
        if stop == TrialScheduler.STOP or epoch_of[trial_id] == epochs:
            live.remove(trial_id)
            ended[trial_id] = epoch_of[trial_id]
            rounds.on_trial_complete(trial_id, result)
    return [(tid, proposed[tid], ended[tid]) for tid in sorted(proposed)]


def test_any_interleaving_of_the_trials_gives_the_same_search():
    runs = [_simulate(order_seed) for order_seed in (0, 1, 2)]
    assert runs[0] == runs[1] == runs[2]
    stopped = [epoch for *_, epoch in runs[0] if epoch < 12]
    assert stopped, "the curves were meant to stop some trials early"
    assert [epoch for *_, epoch in runs[0][:3]] == [12, 12, 12]  # round 0 runs to its end


def test_a_round_is_concurrency_else_the_largest_cluster_else_what_holds_now():
    cfg = SearchConfig(load_search_space(REPO / "tests" / "data" / "small_va.yaml"), "/t", "s")
    assert round_size(cfg, fit=2) == 2  # nothing known of the cluster: what holds now
    assert round_size(replace(cfg, max_concurrent=5), fit=2) == 5
    assert round_size(cfg, fit=0) == 1  # a cluster with no worker up yet: one at a time


def test_the_scheduler_is_rounds_on_a_jobs_own_instance_and_a_misspelt_one_names_the_valid(
    monkeypatch, capsys
):
    from abaw_ray.tune.job import print_rerun_note, search_config, search_parser

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = load_search_space(REPO / "search_spaces" / "embedded_expr.yaml")
    parser = search_parser("expr", None)
    cfg = search_config(parser.parse_args(["--scheduler", "rounds"]), space, "/s")
    assert cfg.scheduler == "rounds"
    print_rerun_note(cfg)
    assert "prints this table" in capsys.readouterr().out
    print_rerun_note(replace(cfg, scheduler="asha"))
    assert "may differ, --scheduler rounds does not" in capsys.readouterr().out
    # By default a job's own instance searches in rounds; a cluster's search, with ASHA.
    default = search_config(parser.parse_args([]), space, "/s")
    assert (default.scheduler, default.scheduler_used) == ("auto", "rounds")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    on_cluster = search_config(parser.parse_args([]), space, "/s")
    assert (on_cluster.local_instance, on_cluster.scheduler_used) == (False, "asha")
    assert (
        search_config(parser.parse_args(["--scheduler", "none"]), space, "/s").scheduler_used
        == "none"
    )
    print_rerun_note(on_cluster)
    assert "--scheduler rounds does not" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["--scheduler", "round"])
    err = capsys.readouterr().err  # argparse quotes the choices on some Pythons
    assert re.search(
        r"--scheduler: invalid choice: '?round'? \(choose from .*asha.*rounds.*none", err
    )


def test_the_table_numbers_a_trial_as_tunes_counter_in_its_folder_name():
    folders = {
        "run_trial_ca5af492_2_class_weights=True,epochs=3,model=expr_transfo_2026-12-04_14-56-01": (
            "ca5af492",
            2,
        ),
        "/r/s/run_trial_bd61f99d_14_epochs=4,hidden=32,lr=0.0041_2026-12-04_14-52-26": (
            "bd61f99d",
            14,
        ),
        "trainers/train-bd61f99d": ("", 0),
    }
    assert {f: trial_folder_name(f) for f in folders} == folders


def test_the_summary_and_progress_name_trials_by_their_table_number():
    from abaw_ray import report
    from abaw_ray.ensemble import Recipe
    from abaw_ray.smoothing import Smoothing

    outcomes = [
        SimpleNamespace(trial_id="ca5af492", number=2),
        SimpleNamespace(trial_id="bd61f99d", number=14),
        SimpleNamespace(trial_id="0a0b0c0d", number=0),  # unknown: its id stays
    ]
    names = report.trial_names(outcomes)
    assert names == {"ca5af492": "#2", "bd61f99d": "#14"}
    recipe = Recipe(
        weights={"classes": {"bd61f99d": 1.0, "ca5af492": 3.0, "0a0b0c0d": 2.0}},
        smoothing={"classes": Smoothing("mode", 15)},
    )
    text = report.recipe_text(recipe, names)
    assert text.startswith("classes: #2 x3, 0a0b0c0d x2, #14 x1, "), text

    lines = []
    progress = report.trial_progress("val_f1", 8, trial_folder_name)
    trial = SimpleNamespace(
        trial_id="bd61f99d",
        path="/r/s/run_trial_bd61f99d_14_epochs=4_2026-12-04_14-52-26",
        config={"model": "tcn", "features": "face_hog", "epochs": 4},
        last_result={},
        status="TERMINATED",
    )
    progress.on_trial_result(0, [trial], trial, {"epoch": 4, "val_f1": 0.5})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.os, "write", lambda fd, data: lines.append(data.decode()))
        mp.setattr(report, "console_fd", lambda: 1)
        progress.on_trial_complete(0, [trial], trial)
    assert lines == ["trial 1/8 #14 tcn face_hog: best val_f1 0.5000 at epoch 4\n"]
