# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo lint test test-fast clean

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

clean:
	rm -rf $(VENV) runs .pytest_cache

.PHONY: gpu-check
gpu-check:  # one GPU, NGC-like image: install what is missing (wheels only), tests/test_gpu.py, throughput into docs/gpu.md
	PYTHON=$(PYTHON) bash tools/gpu_check.sh
