"""What a search prints and records about itself: trial names, pseudo-label use, the
submitted members, progress bars, the resume command."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from abaw_ray import report
from abaw_ray.console import CONSOLE_FD_ENV, progress
from abaw_ray.ensemble import Recipe
from abaw_ray.runtime import JOB_SUBMIT_ENV, resume_command
from abaw_ray.tune.job import ensemble_params


def _outcome(number: int, score: float, pseudo: bool) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=f"{number:08x}",
        number=number,
        best={"val_f1": score, "epoch": 3},
        config={"model": "tcn", "features": "face_hog", "pseudo_labels": pseudo},
        error=None,
        status="TERMINATED",
    )


def test_the_table_says_which_trials_trained_on_pseudo_labels_and_whether_the_best_did(capsys):
    outcomes = [_outcome(3, 0.6, False), _outcome(1, 0.5, True), _outcome(2, 0.4, False)]
    report.print_trials("expr", outcomes)
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[3] for line in out if line.strip().startswith("#")}
    assert rows == {"#3": "no", "#1": "yes", "#2": "no"}
    assert out[-1].strip() == (
        "pseudo-labels: 1 of 3 trials trained on them; the best did not "
        "(--control measures them only when it does)"
    )


def test_mlflow_records_the_members_of_the_submitted_recipe_not_only_the_selections():
    selection = Recipe(weights={"classes": {"a": 2.0, "b": 1.0, "c": 0.0}})
    submitted = Recipe(weights={"classes": {"c": 1.0}})
    ens = SimpleNamespace(
        selection=SimpleNamespace(recipe=selection), submitted=SimpleNamespace(recipe=submitted)
    )
    params = ensemble_params(ens, members=[object()] * 5, folds=None)
    assert (params["members_used"], params["members_selection"]) == ("c", "a,b")
    assert (params["members_offered"], params["submitted"]) == (5, "trial ensemble")


def test_held_out_counts_are_singular_for_one_video():
    assert [report.count_of(n) for n in (1, 2)] == ["1 video", "2 videos"]


def test_a_progress_bar_is_quiet_when_the_console_is_not_a_terminal(monkeypatch, tmp_path):
    with open(tmp_path / "log", "w") as log:
        monkeypatch.setenv(CONSOLE_FD_ENV, str(log.fileno()))
        bar = progress(range(50), desc="videos")
        assert sum(bar) == 1225
        assert bar.disable
    assert (tmp_path / "log").read_text() == ""


def test_the_resume_hint_is_the_whole_command_with_the_runs_name(monkeypatch):
    monkeypatch.delenv(JOB_SUBMIT_ENV, raising=False)
    monkeypatch.setattr(
        sys, "argv", ["jobs/search_va.py", "--num-samples", "2", "--name", "old", "--resume"]
    )
    assert resume_command("search_va-1") == (
        "python jobs/search_va.py --num-samples 2 --resume --name search_va-1"
    )
