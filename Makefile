# qgen — the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# The CPU wheel on these machines; GPU users with their own torch already installed keep it.
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.qgen-installed
PYTEST_ARGS ?=

.PHONY: setup assets demo test lint clean help

help:
	@echo "make demo   - install, fetch assets, run the default job (SmolLM2-135M, RTN W4 g128, smoke suite)"
	@echo "make test   - install, fetch assets, run the test suite"
	@echo "make assets - fetch and verify the offline model and datasets into QGEN_HOME"
	@echo "make lint   - ruff"
	@echo "make clean  - remove outputs and caches of this checkout (not QGEN_HOME)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

assets: setup
	$(BIN)/qgen assets fetch

demo: assets
	$(BIN)/python -m qgen.main

test: assets
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf outputs multirun report .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
