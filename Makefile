# aoe - developer commands. `make help` lists them.
# `make run` and `make test` work on a fresh machine with only Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast check lint typecheck format bench fuzz demo-local clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q aoe
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install aoe with its development tools

run: $(STAMP) ## Run the example workflow offline (--mock), with its live view
	$(BIN)/aoe validate workflows/*.yaml
	AOE_MOCK_LATENCY=$${AOE_MOCK_LATENCY:-0.4} $(BIN)/aoe run workflows/competitor-brief.yaml --mock

# pytest-xdist: two processes per core (PYTEST_WORKERS=0: none). Most of the
# slow tests wait on real processes and servers, so a second worker per core
# fills the first one's waits: on 2 cores the suite takes ~2.4 min, not ~3
PYTEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(2 * len(os.sched_getaffinity(0)))')
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal

test: $(STAMP) ## Run the whole test suite
	$(PYTEST)

test-fast: $(STAMP) ## The inner loop: every test but those marked slow (under a minute)
	$(PYTEST) -m "not slow"

lint: $(STAMP) ## ruff (style, common mistakes) and the layers contract (lint-imports)
	$(BIN)/ruff check aoe tests bench demo
	$(BIN)/ruff format --check aoe tests bench demo
	$(BIN)/lint-imports

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

check: lint typecheck test ## Lint, types and tests

format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff format aoe tests bench demo
	$(BIN)/ruff check --fix aoe tests bench demo

bench: $(STAMP) ## Speed and memory benchmarks (prints figures and ratios)
	$(BIN)/python bench/validate_speed.py
	$(BIN)/python bench/engine_overhead.py
	$(BIN)/python bench/limiter.py
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/shared_limiter.py
	$(BIN)/python bench/shared_records.py
	$(BIN)/python bench/hostile.py
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/report.py

VIA ?= llama
demo-local: $(STAMP) ## Every workflow against a real small model here (VIA=litellm: through the LiteLLM proxy)
	$(BIN)/python demo/local.py --via $(VIA)

SECONDS ?= 300
fuzz: $(STAMP) ## Fuzz aoe with hostile files for SECONDS (300); findings in fuzz-findings/
	$(BIN)/python -m tests.fuzz --seconds $(SECONDS) --out fuzz-findings

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis fuzz-findings .demo
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
