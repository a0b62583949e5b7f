# qgen — the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# The CPU wheel on these machines; GPU users with their own torch already installed keep it.
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.qgen-installed
PYTEST_ARGS ?=

.PHONY: setup assets demo test test-numerics lint clean help

help:
	@echo "make demo   - install, fetch assets, run the default job (SmolLM2-135M, RTN W4 g128, smoke suite)"
	@echo "make test   - install, fetch assets, run the test suite"
	@echo "make test-numerics - the numeric tests under both CPU kernel paths and 1 and 2 threads"
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

# The tests marked `numeric` (float results) under the float paths CI may meet: this CPU's own kernels (AVX-512 /
# AMX on some machines) and ATEN_CPU_CAPABILITY=avx2 (what an AVX2-only machine runs), each with 1 and 2 threads —
# a test whose margin depends on summation order fails here on any machine. KERNEL:THREADS pairs; native = unset.
NUMERIC_PATHS ?= native:1 native:2 avx2:1 avx2:2
test-numerics: assets
	@for path in $(NUMERIC_PATHS); do kernel=$${path%%:*}; threads=$${path##*:}; \
	  echo "== numeric tests: kernels=$$kernel threads=$$threads"; \
	  if [ "$$kernel" = native ]; then unset ATEN_CPU_CAPABILITY; else export ATEN_CPU_CAPABILITY=$$kernel; fi; \
	  OMP_NUM_THREADS=$$threads $(BIN)/python -m pytest -q -m numeric $(PYTEST_ARGS) || exit 1; \
	done

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf outputs multirun report .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

# --- analysis (issue 5): paper tables and figures from outputs/, and the experiment sweeps that feed them ------
# `make tables figures` rebuilds report/ from every results.json under outputs/; REPORT_ARGS passes more options
# to `qgen report` (e.g. --groups FILE, --metric acc_norm, --suite 's2_*').
OUTPUTS     ?= outputs
REPORT_DIR  ?= report
REPORT_ARGS ?=
QGEN_REPORT  = $(BIN)/qgen report $(OUTPUTS) --out $(REPORT_DIR) $(REPORT_ARGS)

.PHONY: tables figures report-s1 report-s2 report-s3 report-ablation
tables: setup
	$(QGEN_REPORT) --scenario s1 s2 s3 ablation --no-figures
figures: setup
	$(QGEN_REPORT) --scenario s1 s2 s3 ablation
report-s1: setup
	$(QGEN_REPORT) --scenario s1
report-s2: setup
	$(QGEN_REPORT) --scenario s2
report-s3: setup
	$(QGEN_REPORT) --scenario s3
report-ablation: setup
	$(QGEN_REPORT) --scenario ablation

# One command per study: `make study STUDY=s2 ENV=offline` runs what conf/study/s2.yaml declares in the environment
# conf/env/offline.yaml declares — the FP reference (if the study has one), each sweep, then the report under
# experiments/reports/<study>_<env>/ — through `qgen study run` (see experiments/README.md). STUDY_ARGS passes more
# options, e.g. STUDY_ARGS='--set seed=42 --set quantizer=gptq --override eval_suite.limit=10'; `qgen study jobs
# STUDY --env ENV` lists the jobs without running them. experiment-<study> is the same target for ENV=offline.
STUDY      ?= smoke
ENV        ?= offline
STUDY_ARGS ?=
STUDIES    := $(basename $(notdir $(wildcard conf/study/*.yaml)))

.PHONY: study $(addprefix experiment-,$(STUDIES))
study: assets
	nice $(BIN)/qgen study run $(STUDY) --env $(ENV) $(STUDY_ARGS)
$(addprefix experiment-,$(STUDIES)): experiment-%: assets
	nice $(BIN)/qgen study run $* --env $(ENV) $(STUDY_ARGS)
