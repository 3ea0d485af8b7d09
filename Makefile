# The two README commands: `make demo` (main job) and `make test` (test suite).
# Both create .venv/ in the repository root. GPU users override the torch pin, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   make demo JAX_SPEC="jax[cuda12]"
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
JAX_SPEC ?= jax
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q "$(JAX_SPEC)" -e ".[torch,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eval.spec

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench.timer_xl
	$(BIN)/python -m bench.spec
	$(BIN)/python -m bench.chronos

clean-venv:
	rm -rf $(VENV)
