# `make demo` (set up, then run the default recipe), `make test` (set up, then every test), `make test-fast`
# (the tests not marked slow: unit and in-process ones, under 2 minutes) and `make lint` (ruff and the import
# contracts of pyproject.toml).
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

.PHONY: setup demo test test-fast lint clean

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

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
