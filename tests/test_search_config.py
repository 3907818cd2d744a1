"""Which search ``--resume`` continues, and how the search job's flags meet SearchConfig's
defaults (each default lives once, in the dataclass)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from abaw_ray.runtime import TrialResources
from abaw_ray.tasks import TRIAL_FINISHED
from abaw_ray.tune.job import search_config, search_parser
from abaw_ray.tune.search import (
    SearchConfig,
    latest_search,
    report_while_fitting,
    search_name,
)
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


def test_searches_started_in_the_same_second_take_folders_of_their_own(tmp_path):
    names = {search_name("va", 1_700_000_000) for _ in range(50)}
    assert len(names) >= 45  # 4 random hex digits: 50 draws rarely collide more than once
    assert len({n[: -len("-xxxx")] for n in names}) == 1  # one second, one time part
    # Resume finds the newest of them, and an older name without the random part still counts.
    _search(tmp_path, "search_va-20260102-000000")
    _search(tmp_path, "search_va-20260102-000001-0a1b")
    _search(tmp_path, "search_va-20260102-000001-ff00", restorable=False)
    assert latest_search(str(tmp_path), "va") == "search_va-20260102-000001-0a1b"
    _search(tmp_path, "search_va-20260102-000001-zzzz")  # not a name a search takes
    assert latest_search(str(tmp_path), "va") == "search_va-20260102-000001-0a1b"


def test_flags_override_the_config_defaults_and_only_those(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = load_search_space(REPO / "search_spaces" / "embedded_va.yaml")
    parser = search_parser("va", None)
    defaults = search_config(parser.parse_args([]), space, "/s")
    # A job on its own local instance: no autoscaler to wait for, no head to spare.
    assert defaults == SearchConfig(space=space, storage_path="/s", name=None, local_instance=True)
    joined = search_config(parser.parse_args(["--address", "10.0.0.1:6379"]), space, "/s")
    assert joined == SearchConfig(space=space, storage_path="/s", name=None)
    assert defaults.holdout == SearchConfig.holdout and defaults.num_samples == 8
    given = search_config(
        parser.parse_args(["--num-samples", "3", "--holdout", "0", "--top-k", "2"]), space, "/s"
    )
    assert (given.num_samples, given.holdout, given.top_k) == (3, 0.0, 2)
    assert given.searcher == SearchConfig.searcher  # untouched flags keep the default
    help_text = parser.format_help()
    assert "(default: 8)" in help_text and "(default: 0.333)" in help_text


def _nodes(*resources: dict[str, float], dead: int = 0) -> list[dict]:
    """What ``ray.nodes()`` says of nodes with these resources (and ``dead`` dead ones)."""
    alive = [{"Alive": True, "Resources": r} for r in resources]
    return alive + [{"Alive": False, "Resources": {"CPU": 64.0}}] * dead


@pytest.mark.parametrize(
    "nodes, gpus, local, expected",
    [
        (_nodes({"CPU": 3.0}), 0.0, True, 3),  # three 1-CPU trials on a local instance
        (_nodes({"CPU": 3.0}), 0.0, False, 2),  # on a cluster each driver takes a sliver too
        (_nodes({"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 2.0}), 0.0, False, 3),  # one a node
        (_nodes({"CPU": 16.0, "GPU": 1.0}), 0.25, False, 4),  # 0.25 GPU a trial: four
        (_nodes({"CPU": 0.0}, {"CPU": 16.0}, dead=2), 0.0, False, 15),  # a 0-CPU head
        (_nodes({"CPU": 0.0}), 0.0, False, 0),  # an autoscaling cluster's head alone
        ([], 0.0, False, 0),
    ],
)
def test_trials_fitting_counts_each_nodes_cpus_gpus_and_the_drivers_share(
    nodes, gpus, local, expected
):
    from abaw_ray.tune.search import trials_fitting

    space = load_search_space(SPACE)
    resources = TrialResources(gpus=gpus)
    cfg = SearchConfig(space, "/tmp", "s", resources=resources, local_instance=local)
    assert trials_fitting(nodes, cfg) == expected


@pytest.mark.parametrize(
    "fit, settings, expected",
    [
        (0, {}, 2),  # nothing up yet: two trials wait, so the autoscaler launches nodes
        (4, {}, 8),  # four run: four more may wait (the cluster doubles a round)
        (4, {"max_concurrent": 5}, 5),  # --concurrency caps it
        (3, {"local_instance": True}, 3),  # a local instance: what fits, nothing waits
        (0, {"local_instance": True}, 1),  # ... and at least one, whatever fits
    ],
)
def test_trials_at_once_grow_with_the_cluster_and_bound_the_waiting(fit, settings, expected):
    from abaw_ray.tune.search import trials_at_once

    cfg = SearchConfig(load_search_space(SPACE), "/tmp", "s", num_samples=200, **settings)
    assert trials_at_once(cfg, fit) == expected


def test_paced_limiter_hands_out_trials_as_the_cluster_grows(monkeypatch):
    """200 samples on an autoscaling cluster: two trials while the head is alone, more as
    nodes join, one more each time one ends; never all 200 at once."""
    import copy

    import ray
    from ray.tune.search import Searcher

    from abaw_ray.tune.search import PacedLimiter

    class Counting(Searcher):
        def __init__(self) -> None:
            super().__init__(metric="val_ccc", mode="max")
            self.suggested: list[str] = []
            self.completed: list[str] = []

        def suggest(self, trial_id):
            self.suggested.append(trial_id)
            return {"lr": 0.001}

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.completed.append(trial_id)

    nodes = _nodes({"CPU": 0.0})
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    inner = Counting()
    cfg = SearchConfig(load_search_space(SPACE), "/tmp", "s", num_samples=200)
    limiter = PacedLimiter(inner, cfg)

    def ask(n: int) -> list[str]:
        given = [f"t{len(inner.suggested) + i}" for i in range(n)]
        return [t for t in given if limiter.suggest(t) is not None]

    assert len(ask(10)) == 2  # the head alone: 2 wait for the autoscaler
    nodes = _nodes({"CPU": 0.0}, {"CPU": 16.0}, {"CPU": 16.0})  # two 16-CPU workers joined
    assert len(ask(100)) == 58  # 15 a node (with the drivers' share) + 30 waiting, 2 asked
    limiter.on_trial_complete(inner.suggested[0], {"val_ccc": 0.5})
    assert inner.completed == [inner.suggested[0]]  # TPE learns as trials end
    assert len(ask(5)) == 1  # one ended, one more
    nodes = _nodes({"CPU": 0.0}, dead=2)  # every worker gone
    assert ask(5) == []
    state = copy.deepcopy(limiter.get_state())  # what Tune saves to resume
    assert len(state["live_trials"]) == 60 and state["pacing"].num_samples == 200


@pytest.mark.parametrize(
    "raised, stopped",
    [("GetTimeoutError", False), ("RayActorError", True), (None, True)],
)
def test_a_slow_stop_flag_is_not_a_stop_but_a_dead_one_is(raised, stopped, monkeypatch):
    """A trial asks its stop flag each epoch: a loaded node answering late must not end the
    trial (that ended trials early, mid-search, on a busy fake cluster); a flag gone with its
    Tune trial, or one that says so, stops it."""
    import ray

    from abaw_ray.train.loop import stop_requested

    class Flag:
        class is_set:  # noqa: N801 - an actor method's shape: flag.is_set.remote()
            @staticmethod
            def remote():
                return "ref"

    def get(ref, timeout=None):
        if raised is not None:
            raise getattr(ray.exceptions, raised)()
        return True

    monkeypatch.setattr(ray, "get", get)
    assert stop_requested({"stop_flag": [Flag()]}) is stopped
    assert stop_requested({"stop_flag": None}) is False


def _launcher_shape(name: str):
    import yaml

    from abaw_ray.tune.capacity import shape_from_launcher

    path = REPO / "cluster" / name
    return shape_from_launcher(yaml.safe_load(path.read_text()), str(path))


@pytest.mark.parametrize(
    "config, gpus, expected",
    [
        # 8 workers of 16 CPUs and 1 GPU, a 0-CPU head: 15 one-CPU trials a node (with the
        # drivers' share, 16 // 1.01), 4 a node at 0.25 GPU a trial
        ("aws.yaml", 0.0, 8 * 15),
        ("gcp.yaml", 0.25, 8 * 4),
        ("fake_multinode.yaml", 0.0, 3),  # 3 workers of 2 CPUs: one trial each
    ],
)
def test_the_largest_cluster_is_read_from_the_autoscalers_config(config, gpus, expected):
    from abaw_ray.tune.search import trials_at_most

    cfg = SearchConfig(load_search_space(SPACE), "/t", "s", resources=TrialResources(gpus=gpus))
    assert trials_at_most(replace(cfg, largest=_launcher_shape(config))) == expected


def test_trials_in_flight_never_wait_for_nodes_the_autoscaler_cannot_add():
    from abaw_ray.tune.search import trials_at_once

    cfg = SearchConfig(load_search_space(SPACE), "/t", "s", num_samples=200)
    cfg = replace(cfg, largest=_launcher_shape("fake_multinode.yaml"))  # 3 trials at most
    assert [trials_at_once(cfg, fit) for fit in (0, 1, 2, 3)] == [2, 3, 3, 3]
    # A killed node the GCS still lists beside its replacement: 4 fit for a moment, 3 at most.
    assert trials_at_once(cfg, 4) == 3
    aws = replace(cfg, largest=_launcher_shape("aws.yaml"))  # 120 at most
    assert [trials_at_once(aws, fit) for fit in (0, 15, 60, 105, 120)] == [2, 30, 120, 120, 120]


def test_the_global_max_workers_takes_the_nodes_that_hold_the_most():
    from abaw_ray.tune.capacity import ClusterShape

    small, big = (("CPU", 4.0),), (("CPU", 16.0),)
    shape = ClusterShape((("CPU", 2.0),), ((small, 5), (big, 2)), 3, "test")
    fit = lambda r: int(r.get("CPU", 0) // 2)  # noqa: E731
    assert shape.most(fit) == 1 + 8 + 8 + 2  # the head, both big nodes, one small
    assert replace(shape, max_workers=None).most(fit) == 1 + 16 + 5 * 2


def test_a_config_without_declared_worker_cpus_or_unbounded_groups_is_unknown():
    from ray.core.generated import autoscaler_pb2

    from abaw_ray.tune.capacity import shape_from_gcs_config, shape_from_launcher

    config = {
        "max_workers": 4,
        "head_node_type": "head",
        "available_node_types": {"head": {"resources": {}}, "w": {"max_workers": 4}},
    }
    assert shape_from_launcher(config, "x") is None  # CPUs come from the instance type
    gcs = autoscaler_pb2.ClusterConfig()
    group = gcs.node_group_configs.add()
    group.resources["CPU"], group.resources["GPU"], group.max_count = 8, 1, 5
    assert shape_from_gcs_config(gcs).workers == (((("CPU", 8.0), ("GPU", 1.0)), 5),)
    group.max_count = -1  # no bound
    assert shape_from_gcs_config(gcs) is None
    assert shape_from_gcs_config(autoscaler_pb2.ClusterConfig()) is None


def test_the_private_ray_call_behind_the_cluster_config_still_exists():
    """capacity.gcs_cluster_config is the project's one private Ray call: an upgrade that
    moves it fails here, not silently on a cluster (where the search would fall back to
    sizing by the nodes that are up)."""
    from ray._private.state import state

    assert callable(state.get_cluster_config)


def test_a_named_cluster_config_that_is_missing_or_not_one_is_an_error(tmp_path, monkeypatch):
    from abaw_ray.errors import InputFormatError
    from abaw_ray.tune.capacity import CLUSTER_CONFIG_ENV, cluster_shape

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(CLUSTER_CONFIG_ENV, str(tmp_path / "nope.yaml"))
    with pytest.raises(InputFormatError, match="nope.yaml: \\$ABAW_RAY_CLUSTER_CONFIG names no"):
        cluster_shape()
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_workers: 2\n")
    monkeypatch.setenv(CLUSTER_CONFIG_ENV, str(bad))
    with pytest.raises(InputFormatError, match="bad.yaml: not a cluster launcher config"):
        cluster_shape()
    # What `ray up` leaves on a launcher cluster's head is found without the variable.
    monkeypatch.delenv(CLUSTER_CONFIG_ENV)
    (tmp_path / "ray_bootstrap_config.yaml").write_text(
        (REPO / "cluster" / "fake_multinode.yaml").read_text()
    )
    shape = cluster_shape()
    assert shape.max_workers == 3 and shape.source.endswith("ray_bootstrap_config.yaml")


def test_results_are_reported_in_order_and_the_last_one_is_held_for_after_the_fit():
    """``run_trial`` reports its trainer's results as they come; one posted just as the
    trainer ends is not lost, and the last (``TRIAL_FINISHED``) is handed back, unreported,
    for after the trainer has shut down."""
    epochs = [{"epoch": e, TRIAL_FINISHED: 0.0} for e in (1, 2, 3)]
    final = {"epoch": 4, TRIAL_FINISHED: 1.0}
    mailbox = [epochs[0]]
    state = {"ended": False, "collects": 0}

    class Fitting:  # the trainer's thread: it ends once it has posted its last results
        def join(self, timeout: float) -> None:
            pass

        def is_alive(self) -> bool:
            return not state["ended"]

    def collect() -> list[dict]:
        taken = mailbox[:]
        mailbox.clear()
        state["collects"] += 1
        if state["collects"] == 1:
            mailbox.append(epochs[1])
        elif state["collects"] == 2:  # posted after this look, then the trainer ends
            mailbox.extend([epochs[2], final])
            state["ended"] = True
        return taken

    reported: list[dict] = []
    last = report_while_fitting(Fitting(), collect, reported.append)
    assert reported == epochs and last == final
