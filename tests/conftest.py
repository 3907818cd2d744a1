"""Shared fixtures: one small embedded corpus per test session, made by the real generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from abaw_ray.data.synthetic import SyntheticCorpus, generate


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCorpus:
    return generate(tmp_path_factory.mktemp("corpus") / "affwild2", videos=8, seed=3)


@pytest.fixture(scope="session")
def corpus_root(synthetic: SyntheticCorpus) -> Path:
    return synthetic.root
