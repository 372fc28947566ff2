# Quickstart targets (README): `make run` and `make test` on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat constraints.txt pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup run lint format test test-all
setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

# The whole pipeline on the bundled sample (sample:digits), sqlite MLflow, Prefect's ephemeral API.
run: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/imgcls run

# ruff: formatting and lint (import order included), configured in pyproject.toml
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The default suite (what CI runs): lint, then the tests; `make test-all` adds the slow tests.
test: setup lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m "not slow and not gpu" -q --durations=25

test-all: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m "not gpu" -q
