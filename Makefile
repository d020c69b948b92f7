# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv first).
# `make test-ngc` runs the suite on the NGC image's stack instead (sets up .venv-ngc first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
TORCH_VERSION ?= 2.13.0

# The NGC stack (nvcr.io/nvidia/pytorch:25.10-py3's Python and torch, the megatron-core pip resolves there):
# Python 3.12, torch from the package index (a CUDA build; without a driver it runs on the CPU), megatron-core 0.19.2.
NGC_VENV ?= .venv-ngc
NGC_PY := $(NGC_VENV)/bin/python
NGC_STAMP := $(NGC_VENV)/.installed
NGC_TORCH_VERSION ?= 2.9.1
NGC_MEGATRON_CORE_VERSION ?= 0.19.2
# the first Python 3.12 that runs: on PATH, or one pyenv installed (its shim fails when 3.12 is not selected)
NGC_PYTHON ?= $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: setup demo lint test test-fast clean setup-ngc test-ngc test-ngc-fast

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: anything that depends on torch must find it installed.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# the test extra: pytest, ruff, transformers (tiny HF models), lm-eval (the harness test)
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(TEST_STAMP)

setup: $(TEST_STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check dtrpo_mega tools tests examples

test: lint
	$(PY) -m pytest -q -rs

test-fast: lint
	$(PY) -m pytest -q -rs -m "not slow"

$(NGC_STAMP): pyproject.toml
	@test -n "$(NGC_PYTHON)" || { echo "make test-ngc needs a Python 3.12 interpreter (set NGC_PYTHON=...)"; exit 1; }
	test -x $(NGC_PY) || $(NGC_PYTHON) -m venv $(NGC_VENV)
	# torch held by a constraints file: nothing installed after it may replace it
	printf 'torch==%s\nmegatron-core==%s\n' $(NGC_TORCH_VERSION) $(NGC_MEGATRON_CORE_VERSION) > $(NGC_VENV)/constraints.txt
	$(NGC_PY) -m pip install --quiet torch==$(NGC_TORCH_VERSION)
	$(NGC_PY) -m pip install --quiet -c $(NGC_VENV)/constraints.txt megatron-core==$(NGC_MEGATRON_CORE_VERSION) -e ".[test]"
	touch $(NGC_STAMP)

setup-ngc: $(NGC_STAMP)

test-ngc: $(NGC_STAMP)
	$(NGC_PY) -m pytest -q -rs

test-ngc-fast: $(NGC_STAMP)
	$(NGC_PY) -m pytest -q -rs -m "not slow"

clean:
	rm -rf $(VENV) $(NGC_VENV) runs .pytest_cache

.PHONY: gpu-check
gpu-check:  # one GPU, NGC-like image: install what is missing (wheels only), tests/test_gpu.py, throughput into docs/gpu.md
	PYTHON=$(PYTHON) bash tools/gpu_check.sh
