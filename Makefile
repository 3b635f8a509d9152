# manualgrad: `make train` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Pinned for this project's machines (x86_64, Python 3.11); pyproject.toml keeps looser ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast lint train bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[train,dev]' $(TORCH_PINS)
	touch $(STAMP)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup

test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow"

train: setup
	$(PY) -m train.run_default

bench: setup
	$(PY) -m benchmarks.bench

clean:
	rm -rf $(VENV) lightning_logs runs .pytest_cache .mypy_cache .ruff_cache
