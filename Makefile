# Set-up is idempotent: the virtual environment is (re)built only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch that lies on this machine's disk; a GPU user sets TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
SBMOE_DATA ?= $(abspath ../shared/datasets)
export SBMOE_DATA

BIN := $(VENV)/bin
STAMP := $(VENV)/.sbmoe-installed

.PHONY: install quickstart test test-slow lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/sbmoe quickstart --output-dir runs/quickstart

test: $(STAMP)
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
