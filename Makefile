# One entry point for people and CI. `make test` installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make watch` needs the package alone (the core uses the standard library only), not the ~130 MB
# of test and lint tools: it gets a venv of its own, with no extra.
WATCH_VENV := .venv-watch

.PHONY: test lint typecheck unit integration watch bench clean

$(BIN)/pytest: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

lint: $(BIN)/pytest
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/pytest
	$(BIN)/mypy

unit: $(BIN)/pytest
	$(BIN)/pytest tests/unit

integration: $(BIN)/pytest
	$(BIN)/pytest tests/integration

## The test command: lint, types, then every test.
test: lint typecheck
	$(BIN)/pytest

$(WATCH_VENV)/bin/sharingmemory: pyproject.toml
	$(PYTHON) -m venv $(WATCH_VENV)
	$(WATCH_VENV)/bin/pip install --quiet -e .
	touch $@

## The main job: watch the time in the shared page (starts a private driver if none runs).
watch: $(WATCH_VENV)/bin/sharingmemory
	$(WATCH_VENV)/bin/sharingmemory watch

## The benchmark suite (< 10 min): figures and plots into docs/performance.md and docs/performance/.
bench: $(BIN)/pytest
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	command -v redis-server >/dev/null || apt-get install -y redis-server || echo "redis-server unavailable: its peer is skipped"
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(WATCH_VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
