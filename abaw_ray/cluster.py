"""Connecting a job to Ray: the cluster it was submitted to, or a local instance."""

from __future__ import annotations

import ray


def init_ray(num_cpus: int | None = None) -> None:
    """Under ``ray job submit`` (or with RAY_ADDRESS) this joins that cluster. ``num_cpus``
    asks for a fresh local instance of that size instead, even if another runs on the host."""
    if ray.is_initialized():
        return
    if num_cpus is not None:
        ray.init(address="local", num_cpus=num_cpus)
    else:
        ray.init()
