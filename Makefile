# The two commands of the README. `make demo` sets up .venv and runs the demo;
# `make test` sets up .venv and runs lint, types, the import layering and the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false
export RUST_BACKTRACE := 0

.PHONY: demo demo-production chaos-production test lint setup deps clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,deploy,kubernetes]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/selfheal demo

# The same demo on the production topology's stores: PostgreSQL (a Debian package: deps) and an S3 store (SeaweedFS).
demo-production: setup deps
	$(BIN)/selfheal demo --profile production

# The chaos matrix of the production topology (PostgreSQL restarted, the object store down longer than
# the MTTR, one of two workers killed), healing on then off. Not in `make test`: about 11 more minutes.
chaos-production: setup deps
	$(BIN)/selfheal chaos run --matrix --profile production

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check flows serving checkpoints chaos tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# Debian packages the tests use (prometheus/promtool, kubectl, chromium, postgresql); installs only what is missing.
deps:
	bash deployments/install-test-deps.sh

# The suite in 2 processes (it mostly waits on servers), then the chaos matrix alone: its verdicts
# are timed, so nothing else runs beside it.
test: lint deps
	$(BIN)/python -m pytest -n 2 --durations=15
	$(BIN)/python -m pytest -m matrix --durations=3 tests/chaos/test_e2e.py

clean:
	rm -rf $(VENV) .selfheal .mypy_cache .pytest_cache .ruff_cache
