"""What the benches that time a search's trials start from: the embedded VA search space with
every epoch run (``patience`` = ``epochs``), its features prepared on a local Ray instance."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from abaw_ray.runtime import init_ray
from abaw_ray.train.prepare import prepare
from abaw_ray.tune.space import SearchSpace, load_search_space

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "embedded_va.yaml"


@contextlib.contextmanager
def embedded_va(
    folder: Path, epochs: int, num_cpus: int
) -> Iterator[tuple[SearchSpace, Any, list[str]]]:
    """The space, its prepared features (in ``folder``) and its feature combinations, on a Ray
    instance of ``num_cpus`` CPUs that ends with the block."""
    space = load_search_space(SPACE).with_value("epochs", epochs)
    space = space.with_value("patience", epochs)  # every epoch runs
    init_ray(num_cpus=num_cpus)
    try:
        prepared = prepare(
            None, folder / "features", space.extractors, "va", alignments=space.alignments()
        )
        yield space, prepared, space.combinations(prepared.keys)
    finally:
        ray.shutdown()
