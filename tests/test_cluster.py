"""The search on an autoscaling cluster, locally: Ray's fake multi-node provider started from our
own YAML (cluster/fake_multinode.yaml) with ``RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=...`` (``ray.cluster_utils.AutoscalingCluster`` is broken in the 2.60
wheel). The head offers no CPUs and no memory, as the cloud configs' head does, so the search's
tasks and trials make the autoscaler launch worker nodes.

One search on the default path (no --concurrency): nodes rise from the head alone toward
max_workers in rounds as trials start, the trials in flight stay within what the workers hold
plus as many waiting, trials' drivers and Train workers run on workers, the head (and the job's
driver) stay under a stated memory bound; a worker node killed mid-trial (every process of it,
SIGKILL) costs its trials nothing they had checkpointed (``trainer.fit_trial`` refits a lost
Train worker, Tune reruns a trial whose driver was lost, both from the last checkpoint), the
search completes, and the workers go after the idle timeout.

The test stops what it started, by process id: the sessions of the head (whose monitor process
starts the fake nodes), of the job and of the node watcher, and any process left that names
this cluster's GCS port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from abaw_ray.data import load_corpus
from abaw_ray.runtime import free_port
from abaw_ray.submission import validate_submission
from abaw_ray.train.loop import TRIAL_JSON
from abaw_ray.tune.capacity import CLUSTER_CONFIG_ENV
from tests.raytools import Pauses, console_script, kill_session, ray_token_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "cluster" / "fake_multinode.yaml"
SPACE = REPO / "tests" / "data" / "small_va.yaml"
EPOCHS = 5  # long enough a trial to be killed in the middle of it
SAMPLES = 8  # more trials than the largest cluster holds at once, with as many waiting
MAX_WORKERS = 3  # cluster/fake_multinode.yaml's
# What the head's Ray processes and the job's driver may hold together (PSS): 2.55 GB measured
# with trial drivers kept off the head (GCS, dashboard, autoscaler, Train's cleaners, the job's
# driver); one trial's drivers on the head would add 1.37 GB (bench/trial_drivers.py).
HEAD_BOUND_GB = 3.5
# A trial's driver processes: they must run on workers, never the head.
TRIAL_DRIVERS = ("ray::ImplicitFunc", "ray::TrainController", "ray::StopFlag")
# The fake provider's node ids: the head ...00000, its workers ...00001, ...00002 and on.
FAKE_ID = re.compile(r"f{51}\d{5}")
HEAD = "f" * 51 + "00000"
NODE_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # how the provider names a node's processes

# The alive nodes and their CPUs, twice a second, straight from the GCS (a Ray driver would be
# a node client of its own, and `ray status` a Python start-up per poll).
WATCH = """
import json, sys, time
from ray._raylet import GcsClient
gcs = GcsClient(address=sys.argv[1])
while True:
    try:
        nodes = gcs.get_all_node_info(timeout=5)
        alive = {
            n.hex(): i.resources_total.get("CPU", 0.0) for n, i in nodes.items() if i.state == 0
        }
        print(json.dumps({"t": time.time(), "nodes": alive}), flush=True)
    except Exception as e:
        print(json.dumps({"t": time.time(), "error": repr(e)}), flush=True)
    time.sleep(0.5)
"""


class NodeWatch:
    """A watcher process in its own session; a thread collects its samples."""

    def __init__(self, address: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WATCH, address],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.samples: list[dict] = []
        self.other: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                sample = json.loads(line)
            except ValueError:
                self.other.append(line)
                continue
            if "nodes" in sample:
                self.samples.append(sample)
            else:
                self.other.append(line)

    def wait_for(self, condition, timeout: float, what: str) -> dict:
        seen = len(self.samples)
        deadline = time.time() + timeout
        while time.time() < deadline:
            for sample in self.samples[seen:]:
                if condition(sample["nodes"]):
                    return sample
            seen = len(self.samples)
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(
            f"never {what} in {timeout:.0f} s; last samples {self.samples[-3:]}, "
            f"watcher said {self.other[-5:]}"
        )


@dataclass
class Proc:
    pid: int
    ppid: int
    sid: int
    zombie: bool
    cmdline: str
    node: str | None  # the fake node it belongs to, from its environment


def _procs() -> list[Proc]:
    procs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
            # A process that lost its memory while being read (it is exiting: a killed node's,
            # an ended trial's) reads as an empty or cut environment, which would name no node.
            exiting = (entry / "statm").read_text().split()[0] == "0"
        except OSError:
            continue
        if exiting:
            continue
        node = next(
            (
                kv.split(b"=", 1)[1].decode()
                for kv in environ
                if kv.startswith(f"{NODE_ENV}=".encode())
            ),
            None,
        )
        procs.append(
            Proc(int(entry.name), int(stat[1]), int(stat[3]), stat[0] == "Z", cmdline, node)
        )
    return procs


def _ours(procs: list[Proc], sessions: list[int], port: int) -> list[Proc]:
    """Live processes of this test's sessions, their descendants, and anything naming this
    cluster's GCS port (Ray workers rename themselves ``ray::...``: they are found by session
    and parentage)."""
    named = re.compile(rf"[:=]{port}\b")
    mine = {p.pid for p in procs if p.sid in sessions or named.search(p.cmdline)}
    grew = True
    while grew:
        grew = False
        for p in procs:
            if p.ppid in mine and p.pid not in mine:
                mine.add(p.pid)
                grew = True
    return [p for p in procs if p.pid in mine and not p.zombie and p.pid != os.getpid()]


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tune_results(output: Path) -> dict[str, list[dict]]:
    """Every result Tune recorded, by trial id (each trial's result.json)."""
    results = {}
    for f in output.glob("ray_results/search_va-*/run_trial_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        # Tune also writes a row without the trial's metrics (its last result re-sent when a
        # trial whose node was lost is restored): the epochs are what the trial reported.
        rows = [r for r in rows if "epoch" in r]
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


def _victim(output: Path, head_sid: int) -> tuple[str, str, int, list[Proc]] | None:
    """(trial id, node id, epoch of its last checkpoint, the node's processes) for a trial in
    the middle of its run whose checkpoint Tune has received (so Train registered it) and whose
    Train worker runs on a worker node; None while there is none. The node may hold other
    trials' drivers too: Tune then runs those trials again, from their checkpoints."""
    procs = [p for p in _procs() if p.sid == head_sid and not p.zombie]
    statuses = _statuses(output) or {}
    for trial_id, rows in _tune_results(output).items():
        checkpointed = [r for r in rows if r.get("checkpoint_path")]
        if not checkpointed or rows[-1]["epoch"] > EPOCHS - 2:
            continue
        # Still running: ASHA may have stopped it at its grace period, while another trial's
        # Train worker keeps its node busy (a run under load picked such a trial once).
        if statuses.get(trial_id) != "RUNNING":
            continue
        saved = Path(checkpointed[-1]["checkpoint_path"]) / TRIAL_JSON
        try:
            node = json.loads(saved.read_text())["node_id"]
        except (OSError, ValueError):
            continue
        on_node = {p.pid for p in procs if p.node == node}
        grew = True
        while grew:  # and what its raylet started
            grew = False
            for p in procs:
                if p.ppid in on_node and p.pid not in on_node:
                    on_node.add(p.pid)
                    grew = True
        node_procs = [p for p in procs if p.pid in on_node]
        working = any(p.cmdline.startswith("ray::RayTrainWorker") for p in node_procs)
        if node != HEAD and working:
            return trial_id, node, checkpointed[-1]["epoch"], node_procs
    return None


@dataclass
class FakeCluster:
    """A running fake autoscaling cluster: its GCS address, the environment its clients use,
    the node watcher, the head's session id, and every session to stop at the end."""

    address: str
    config: Path  # the autoscaler's YAML the head started with
    env: dict[str, str]
    watch: NodeWatch
    head_sid: int
    sessions: list[int]

    def start_job(self, args: list[str], log: Path) -> subprocess.Popen:
        """``jobs/search_va.py --address <this cluster> ARGS`` in a session of its own."""
        with log.open("w") as out:
            job = subprocess.Popen(
                [sys.executable, "jobs/search_va.py", "--address", self.address, *args],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.sessions.append(job.pid)
        return job


@contextlib.contextmanager
def fake_cluster(
    tmp_path: Path,
    max_workers: int | None = None,
    worker_cpus: int | None = None,
    pauses: Pauses | None = None,
) -> Iterator[FakeCluster]:
    """cluster/fake_multinode.yaml pointed at a head of this test's own, started the way the
    cloud configs start theirs (no CPU, no memory for Ray, token authentication with a token
    the test makes); stopped, with every fake node, by the process ids it started. ``pauses``
    reach every process of every node."""
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
    address = f"127.0.0.1:{port}"
    config = yaml.safe_load(CONFIG.read_text())
    config["provider"]["gcs_address"] = address  # the provider would default to port 6379
    workers = [
        t for n, t in config["available_node_types"].items() if n != config["head_node_type"]
    ]
    if max_workers is not None:
        config["max_workers"] = max_workers
        for node_type in workers:
            node_type["max_workers"] = min(node_type["max_workers"], max_workers)
    if worker_cpus is not None:
        for node_type in workers:
            node_type["resources"]["CPU"] = worker_cpus
    config_file = tmp_path / "fake_multinode.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH"))
    }
    # Token authentication with a token of the test's own (whatever HOME holds) on the head,
    # its fake nodes (which inherit the head's environment), the watcher and the job.
    env.update(ray_token_env(tmp_path))
    # The job finds the autoscaler's config as on a launcher cluster's head, where `ray up`
    # leaves it in ~/ray_bootstrap_config.yaml (capacity.cluster_shape).
    env[CLUSTER_CONFIG_ENV] = str(config_file)
    # Every process of this cluster, the fake nodes included, finds it by its own dashboard.
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head_env.update(pauses.env if pauses else {})
    sessions: list[int] = []
    watch = None
    try:
        head = subprocess.Popen(
            [
                console_script("ray"),
                "start",
                "--head",
                "--num-cpus=0",  # as the cloud configs' head: no CPU and no memory for Ray
                "--memory=0",
                f"--port={port}",
                f"--dashboard-port={dash}",
                f"--dashboard-agent-listen-port={agent}",
                f"--ray-client-server-port={client}",
                f"--autoscaling-config={config_file}",
                "--disable-usage-stats",
            ],
            env=head_env,
            start_new_session=True,  # its monitor, and so every fake node, share the session
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sessions.append(head.pid)
        out, _ = head.communicate(timeout=180)
        assert head.returncode == 0, out
        watch = NodeWatch(address, env)
        sessions.append(watch.proc.pid)
        watch.wait_for(lambda nodes: nodes == {HEAD: 0.0}, 60, "saw the head alone")
        yield FakeCluster(address, config_file, env, watch, head.pid, sessions)
    finally:
        for sid in sessions:
            kill_session(sid)
        _kill(p.pid for p in _ours(_procs(), sessions, port))
        if watch is not None:
            watch.thread.join(timeout=10)
        marker = Path("/tmp/ray/ray_current_cluster")  # let later ray.init() start afresh
        if marker.is_file() and marker.read_text().strip().endswith(f":{port}"):
            marker.unlink()
    deadline = time.time() + 30  # SIGKILLed processes take a moment to be reaped
    while (left := _ours(_procs(), sessions, port)) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, [(p.pid, p.cmdline[:80]) for p in left]


def _small_space(tmp_path: Path, epochs: int) -> Path:
    space = yaml.safe_load(SPACE.read_text())
    space["parameters"]["epochs"] = {"value": epochs}
    space["parameters"]["patience"] = {"value": epochs}  # no early stop: every trial runs out
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    return space_file


def _ray_status(cluster: FakeCluster) -> str:
    """``ray status`` of the cluster: what a failure message shows of the autoscaler's view."""
    status = subprocess.run(
        [console_script("ray"), "status", "--address", cluster.address],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return status.stdout[-3000:] + status.stderr[-1000:]


# How long the idle workers may stay after a search: the YAML's idle timeout (6 s) and the
# autoscaler's rounds, with room for a loaded machine. A Ray Train autoscaler request that a
# trial left behind (its controller killed before withdrawing it) would hold them 180 s.
SCALE_DOWN_S = 120


def _workers_gone(cluster: FakeCluster) -> float:
    """The idle workers are removed: the GCS sees the head alone, their processes are gone;
    the seconds it took."""
    started = time.time()
    try:
        cluster.watch.wait_for(
            lambda nodes: set(nodes) == {HEAD}, SCALE_DOWN_S, "saw the workers removed"
        )
    except AssertionError as err:
        port = int(cluster.address.rsplit(":", 1)[1])
        left = [
            (p.node[-5:], p.cmdline[:60])
            for p in _ours(_procs(), cluster.sessions, port)
            if p.node not in (None, HEAD) and p.cmdline.startswith("ray::")
        ]
        raise AssertionError(f"{err}\nworkers' actors: {left}\n{_ray_status(cluster)}") from None
    port = int(cluster.address.rsplit(":", 1)[1])
    deadline = time.time() + 30
    while time.time() < deadline:
        procs = _ours(_procs(), cluster.sessions, port)
        workers = [p for p in procs if p.node not in (None, HEAD)]
        if not workers:
            return time.time() - started
        time.sleep(0.5)
    raise AssertionError([(p.pid, p.node, p.cmdline[:80]) for p in workers])


def _statuses(output: Path) -> dict[str, str] | None:
    """Each trial's status in Tune's experiment state (saved every step); None while there is
    none to read."""
    states = sorted(output.glob("ray_results/search_va-*/experiment_state-*.json"))
    if not states:
        return None
    try:
        trials = [json.loads(t) for t, _ in json.loads(states[-1].read_text())["trial_data"]]
        return {t["trial_id"]: t["status"] for t in trials}
    except (OSError, ValueError, KeyError):
        return None  # being replaced


def _in_flight(output: Path) -> int | None:
    """Trials Tune holds PENDING or RUNNING; None while there is no state to read."""
    statuses = _statuses(output)
    if statuses is None:
        return None
    return sum(s in ("PENDING", "RUNNING") for s in statuses.values())


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_the_default_search_scales_out_survives_a_lost_node_and_scales_back(corpus_root, tmp_path):
    """The default path as the docs give it for a cluster: no --concurrency, a 0-CPU head,
    workers declaring a GPU, more of them allowed than the first trials need. Nodes rise from
    the head alone toward max_workers in rounds (never past it), trials in flight stay within
    what the workers hold plus as many waiting, trials' drivers and Train workers run on
    workers and the head stays small. Mid-search a worker node is killed (every process of
    it, SIGKILL): its trials go on from their last checkpoints (Train refits a lost worker;
    Tune reruns a trial whose driver was lost), the search completes with every trial, and the
    workers go after the search.

    Every Train worker pauses after its first checkpoint until a node has been killed: the
    victim is chosen once as many trials as the cluster holds at its largest wait there, so a
    trial is mid-run on a worker node however slow the machine."""
    space_file = _small_space(tmp_path, EPOCHS)
    output = tmp_path / "out"
    seen: list[dict] = []
    driver_nodes: set[str | None] = set()
    victim, killed_at = None, None
    pauses = Pauses(tmp_path / "pauses", "checkpoint_reported")
    with fake_cluster(tmp_path, pauses=pauses) as cluster:
        job_log = tmp_path / "job.log"
        job = cluster.start_job(
            ["--data", str(corpus_root), "--output", str(output), "--space", str(space_file)]
            + ["--num-samples", str(SAMPLES)],
            job_log,
        )
        deadline = time.time() + 1500
        while job.poll() is None and time.time() < deadline:
            procs = _procs()
            head = [
                p
                for p in procs
                if (p.sid == cluster.head_sid and p.node in (None, HEAD)) or p.sid == job.pid
            ]
            training = sum(
                p.cmdline.startswith("ray::RayTrainWorker")
                for p in procs
                if p.sid == cluster.head_sid
            )
            for p in procs:
                if p.sid == cluster.head_sid and p.cmdline.startswith(TRIAL_DRIVERS):
                    driver_nodes.add(p.node)
            sample = cluster.watch.samples[-1] if cluster.watch.samples else {"nodes": {}}
            seen.append(
                {
                    "nodes": len(sample["nodes"]),
                    "in_flight": _in_flight(output),
                    "training": training,
                    "head_gb": sum(_pss_kb(p.pid) for p in head) / 1e6,
                }
            )
            # Once the search holds all the trials it may, a worker node goes: all of its
            # processes.
            if victim is None and len(pauses.reached("checkpoint_reported")) >= MAX_WORKERS:
                victim = _victim(output, cluster.head_sid)
                if victim is not None:
                    _kill(p.pid for p in victim[3])
                    killed_at = time.time()
                    pauses.release("checkpoint_reported")
            time.sleep(0.5)
        pauses.release("checkpoint_reported")  # no victim by the deadline: fail, never hang
        job.wait(timeout=900)
        assert job.returncode == 0, job_log.read_text()[-5000:]
        assert victim is not None, "no trial was ever mid-run on a worker node to kill"
        flight = [s["in_flight"] for s in seen if s["in_flight"] is not None]
        peak_head = max(s["head_gb"] for s in seen)
        print(
            f"nodes {max(s['nodes'] for s in seen)} at most; trials in flight at most "
            f"{max(flight)}, training at most {max(s['training'] for s in seen)}; head and job "
            f"driver at most {peak_head:.2f} GB PSS; killed node {victim[1][-5:]} "
            f"({victim[0]}, checkpointed epoch {victim[2]})"
        )
        out = job_log.read_text()
        down = _workers_gone(cluster)
        counts = [len(s["nodes"]) for s in cluster.watch.samples]
        print(f"workers gone {down:.0f} s after the search ended")

    # Nodes rose from the head alone, never past the YAML's max_workers, and fell back after.
    # Three trials' Train workers and drivers fit on two of the 2-CPU workers, so whether the
    # third comes up depends on how Ray packs them: two at least.
    assert counts[0] == 1 and 3 <= max(counts) <= 1 + MAX_WORKERS and counts[-1] == 1, counts
    # Never every sample at once: at every moment at most what the workers up so far hold
    # (one trial a 2-CPU node, with the drivers' sliver) plus as many waiting, at least 2,
    # and never more than the cluster holds at its largest, read from the autoscaler's config.
    assert f"the cluster grows to {MAX_WORKERS} trials at once ({cluster.config})" in out
    workers = 0
    for s in seen:
        workers = max(workers, s["nodes"] - 1)
        if s["in_flight"] is not None:
            assert s["in_flight"] <= min(workers + max(2, workers), MAX_WORKERS), (s, workers)
    assert max(flight) == MAX_WORKERS < SAMPLES, flight
    assert max(s["training"] for s in seen) >= 2
    # Trials' drivers and Train workers ran on workers only; the head stayed small.
    assert driver_nodes and None not in driver_nodes and HEAD not in driver_nodes, driver_nodes
    for ckpt in output.glob(f"ray_results/search_va-*/trainers/*/checkpoint_*/{TRIAL_JSON}"):
        assert json.loads(ckpt.read_text())["node_id"] not in (HEAD, None)
    assert peak_head < HEAD_BOUND_GB, peak_head
    # Every trial accounted for, a valid submission.
    results = _tune_results(output)
    assert len(results) == SAMPLES, sorted(results)
    for i in range(1, SAMPLES + 1):
        assert f"trial {i}/{SAMPLES} " in out, out[-3000:]
    (submission,) = output.glob("search_va-*/VA_submission.txt")
    corpus = load_corpus(corpus_root)
    assert validate_submission(submission, corpus.templates["va"]) == len(corpus.templates["va"])
    # The killed trial went on from its last checkpoint: nothing up to that epoch was trained
    # twice, it reported epochs after its node was gone, and what it checkpointed after the
    # loss was written elsewhere.
    trial_id, node, ckpt_epoch, _ = victim
    epochs = [r["epoch"] for r in results[trial_id]]
    assert all(epochs.count(e) == 1 for e in range(1, ckpt_epoch + 1)), (ckpt_epoch, epochs)
    assert results[trial_id][-1]["timestamp"] >= int(killed_at) and epochs[-1] > ckpt_epoch
    trainer = next(output.glob(f"ray_results/search_va-*/trainers/train-{trial_id}"))
    after = [c for c in trainer.glob(f"checkpoint_*/{TRIAL_JSON}") if c.stat().st_mtime > killed_at]
    assert all(json.loads(c.read_text())["node_id"] != node for c in after), after
