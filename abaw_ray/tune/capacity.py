"""What an autoscaling cluster can grow to: its node shapes at their largest counts, read from
the autoscaler's own configuration, so that a search sizes its concurrency by the cluster it
will have rather than the one it starts on (``search.trials_at_once``).

The configuration is the first of these that exists:
- ``$ABAW_RAY_CLUSTER_CONFIG``: a cluster launcher YAML (a cluster started by hand from one,
  as the fake multi-node test does);
- ``~/ray_bootstrap_config.yaml``: what ``ray up`` leaves on the head of a launcher cluster
  (``cluster/aws.yaml``, ``cluster/gcp.yaml``), where ``ray job submit`` runs the job's driver;
- the configuration an autoscaler (v2, as KubeRay runs it) reports to the GCS, read through
  Ray's private state API: this module's one private use, checked by a test on each upgrade.
None of them (a laptop, a cluster without an autoscaler): ``None``, and a search sizes its
concurrency by the nodes that are up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from abaw_ray.errors import InputFormatError

CLUSTER_CONFIG_ENV = "ABAW_RAY_CLUSTER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the config on the head


@dataclass(frozen=True)
class ClusterShape:
    """The node types an autoscaler may run, each with the most nodes of it, and the most
    worker nodes in all (``None``: no cap beyond the types'). ``source``: where it was read."""

    head: tuple[tuple[str, float], ...]  # the head's resources (it never scales)
    workers: tuple[tuple[tuple[tuple[str, float], ...], int], ...]  # (resources, most nodes)
    max_workers: int | None
    source: str

    def most(self, fit: Callable[[dict[str, float]], int]) -> int:
        """The most of ``fit(node resources)`` the cluster holds at once at its largest: the
        head's, plus the best ``max_workers`` worker nodes'."""
        per_node = sorted(
            (fit(dict(r)) for r, count in self.workers for _ in range(count)), reverse=True
        )
        if self.max_workers is not None:
            per_node = per_node[: self.max_workers]
        return fit(dict(self.head)) + sum(per_node)


def _resources(r: dict | None) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((str(k), float(v)) for k, v in (r or {}).items()))


def shape_from_launcher(config: dict, source: str) -> ClusterShape | None:
    """A cluster launcher YAML's ``available_node_types`` at their ``max_workers``, capped by
    the top-level ``max_workers``; None where a worker type declares no CPUs (the autoscaler
    then detects them from the instance type, which this file does not say)."""
    types, head = config["available_node_types"], config["head_node_type"]
    if any("CPU" not in (t.get("resources") or {}) for n, t in types.items() if n != head):
        return None
    workers = tuple(
        (_resources(t.get("resources")), int(t.get("max_workers", 0)))
        for name, t in types.items()
        if name != head
    )
    cap = config.get("max_workers")
    return ClusterShape(
        _resources(types[head].get("resources")),
        workers,
        None if cap is None else int(cap),
        source,
    )


def shape_from_gcs_config(config) -> ClusterShape | None:
    """An autoscaler v2 ``ClusterConfig`` (protobuf): its node groups at their ``max_count``;
    None where a group has no bound (-1) or there is no group."""
    groups = list(config.node_group_configs) if config is not None else []
    if not groups or any(g.max_count < 0 for g in groups):
        return None
    workers = tuple((_resources(dict(g.resources)), int(g.max_count)) for g in groups)
    return ClusterShape((), workers, None, "the autoscaler's configuration in the GCS")


def gcs_cluster_config():
    """The cluster configuration an autoscaler reported to the GCS (None: none did). The one
    private Ray call of the project (Ray Data and Ray Train size themselves by it too)."""
    from ray._private.state import state

    return state.get_cluster_config()


def cluster_shape() -> ClusterShape | None:
    """What the connected cluster can grow to, from the first configuration found (module
    docstring); None where none is. A ``$ABAW_RAY_CLUSTER_CONFIG`` that names no file, or a
    file that is not a launcher config, is an ``InputFormatError`` naming it."""
    named = os.environ.get(CLUSTER_CONFIG_ENV)
    if named and not Path(named).is_file():
        raise InputFormatError(named, None, f"${CLUSTER_CONFIG_ENV} names no file")
    for path in (named, BOOTSTRAP_CONFIG):
        file = Path(path).expanduser() if path else None
        if file is not None and file.is_file():
            try:
                return shape_from_launcher(yaml.safe_load(file.read_text()), str(file))
            except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as err:
                raise InputFormatError(
                    file, None, f"not a cluster launcher config ({type(err).__name__}: {err})"
                ) from err
    try:
        return shape_from_gcs_config(gcs_cluster_config())
    except Exception:  # an old GCS, an autoscaler v1, a Ray without the call: sized as it is up
        return None
