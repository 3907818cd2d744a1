"""Which search ``--resume`` continues, and how the search job's flags meet SearchConfig's
defaults (each default lives once, in the dataclass)."""

from __future__ import annotations

from pathlib import Path

import pytest

from abaw_ray.tune.job import search_config, search_parser
from abaw_ray.tune.search import SearchConfig, latest_search, search_name
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "tests" / "data" / "small_va.yaml"


def _search(root: Path, name: str, restorable: bool = True) -> None:
    (root / name).mkdir(parents=True)
    if restorable:
        (root / name / "tuner.pkl").write_bytes(b"")  # what Tune saves to restore from


def test_resume_takes_the_latest_restorable_search_never_a_control(tmp_path):
    _search(tmp_path, "search_va-20260101-000000")
    _search(tmp_path, "search_va-20260102-000000")
    _search(tmp_path, "search_va-20260102-000000-control-20260102-010000")  # older layout
    _search(tmp_path, "search_va-20260103-000000", restorable=False)  # killed before saving
    _search(tmp_path, "search_expr-20260104-000000")
    _search(tmp_path / "search_va-20260102-000000" / "controls", "search_va-20260105-000000")
    assert latest_search(str(tmp_path), "va") == "search_va-20260102-000000"
    assert latest_search(str(tmp_path), "expr") == "search_expr-20260104-000000"
    assert latest_search(str(tmp_path / "nothing"), "va") is None


def test_default_names_sort_by_start_time():
    a, b = search_name("va", 1_700_000_000), search_name("va", 1_700_000_061)
    assert a.startswith("search_va-") and a < b


def test_flags_override_the_config_defaults_and_only_those():
    space = load_search_space(REPO / "search_spaces" / "embedded_va.yaml")
    parser = search_parser("va", None)
    defaults = search_config(parser.parse_args([]), space, "/s")
    assert defaults == SearchConfig(space=space, storage_path="/s", name=None)
    assert defaults.holdout == SearchConfig.holdout and defaults.num_samples == 8
    given = search_config(
        parser.parse_args(["--num-samples", "3", "--holdout", "0", "--top-k", "2"]), space, "/s"
    )
    assert (given.num_samples, given.holdout, given.top_k) == (3, 0.0, 2)
    assert given.searcher == SearchConfig.searcher  # untouched flags keep the default
    help_text = parser.format_help()
    assert "(default: 8)" in help_text and "(default: 0.333)" in help_text


@pytest.mark.parametrize(
    "resources, expected",
    [
        ({"CPU": 3.0}, 3),  # three 1-CPU trials fit now
        ({"CPU": 16.0, "GPU": 1.0}, 4),  # 0.25 GPU a trial: the GPU fits four
        ({"CPU": 0.0}, 8),  # an autoscaling cluster's CPU-0 head alone: all, to scale up
        ({}, 8),
    ],
)
def test_default_concurrency_fits_the_cluster_or_lets_it_scale(resources, expected, monkeypatch):
    import ray

    from abaw_ray.tune.search import default_concurrency

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    gpus = 0.25 if "GPU" in resources else 0.0
    cfg = SearchConfig(load_search_space(SPACE), "/tmp", "s", num_samples=8, gpus_per_trial=gpus)
    assert default_concurrency(cfg) == expected
