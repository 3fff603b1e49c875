# Every target bootstraps .venv itself when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# two test processes, one per core; a test file stays in one process (its module fixtures start Ray once)
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
PYTEST := $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: test demo lint unit fast bench venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## make test: ruff, then the whole test suite (GPU tests skip themselves without a GPU)
test: lint unit

## make demo: the quickstart -- uniform vs random vs direct (Optuna TPE + ASHA) on digits, 2 seeds, MLflow + report
demo: $(STAMP)
	$(BIN)/widthtune quickstart

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

unit: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

## make fast: the suite without slow tests
fast: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

## make bench: the benchmarks (figures printed as ratios against a same-run baseline)
bench: $(STAMP)
	$(BIN)/python benchmarks/cost_model.py
	$(BIN)/python benchmarks/data.py
	RAY_AUTH_MODE=disabled $(BIN)/python benchmarks/overhead.py
	RAY_AUTH_MODE=disabled $(BIN)/python benchmarks/many_trials.py
	RAY_AUTH_MODE=disabled $(BIN)/python benchmarks/schedulers.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
