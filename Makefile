# Set-up is idempotent: the virtual environment is (re)built only when pyproject.toml changes. The quickstart
# needs only the runtime dependencies and the packaged encoder; the tests add the dev extra on top.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch that lies on this machine's disk; a GPU user sets TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
SBMOE_DATA ?= $(abspath ../shared/datasets)
export SBMOE_DATA

BIN := $(VENV)/bin
RUNTIME := $(VENV)/.sbmoe-runtime
DEV := $(VENV)/.sbmoe-dev

.PHONY: install install-dev quickstart test test-slow lint

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" -e ".[minilm]"
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" -e ".[dev]"
	touch $(DEV)

install: $(RUNTIME)

install-dev: $(DEV)

quickstart: $(RUNTIME)
	$(BIN)/sbmoe quickstart --output-dir runs/quickstart

test: $(DEV)
	$(BIN)/pytest

test-slow: $(DEV)
	$(BIN)/pytest -m slow

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
