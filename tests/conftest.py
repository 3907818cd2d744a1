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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        help="a skipped test fails unless it is marked may_skip (CI: a skip would hide a "
        "broken install step)",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and item.config.getoption("--fail-on-skip")
        and item.get_closest_marker("may_skip") is None
    ):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under --fail-on-skip (not marked may_skip): {reason}"
