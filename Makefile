# manualgrad: `make train` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Pinned for this project's machines (x86_64, Python 3.11); pyproject.toml keeps looser ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The per-sample tests' oracles, at the versions they were checked with.
ORACLE_PINS := opacus==1.6.0 backpack-for-pytorch==1.7.1
# The ScatterNet features of configs/dp.yaml (train/features.py), as tested.
APP_PINS := kymatio==0.3.0
STAMP  := $(VENV)/.installed
# The oldest torch pyproject.toml allows; `make test-compat` runs the core tests on it.
COMPAT_VENV  := .venv-compat
COMPAT_PY    := $(COMPAT_VENV)/bin/python
COMPAT_TORCH := torch==2.6.0
COMPAT_STAMP := $(COMPAT_VENV)/.installed
COMPAT_PYTEST_ARGS ?= -n 2 --dist loadgroup
# The tests of manualgrad itself (and its doctests): no lightning/torchvision needed.
CORE_TESTS   := manualgrad tests/test_activations.py tests/test_amp.py tests/test_compat.py tests/test_compile.py \
                tests/test_dense.py tests/test_errors.py tests/test_fusion.py tests/test_gpu.py tests/test_loss.py tests/test_modules.py \
                tests/test_per_sample.py tests/test_reference.py tests/test_softmax.py

.PHONY: setup test test-fast test-compat mutants lint train train-dp bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[train,dev]' $(TORCH_PINS) $(ORACLE_PINS) $(APP_PINS)
	touch $(STAMP)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup

test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow"

# Not in .ci/run (minutes): each deliberate formula error of scripts/mutants.py must fail `make test-fast`.
mutants: setup
	$(PY) scripts/mutants.py

# Not in .ci/run: installing the old torch takes minutes and gigabytes.
$(COMPAT_STAMP): pyproject.toml Makefile
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q --upgrade pip
	$(COMPAT_PY) -m pip install -q $(COMPAT_TORCH) numpy 'pytest>=8' 'pytest-xdist>=3.5' $(ORACLE_PINS)
	$(COMPAT_PY) -m pip install -q --no-deps -e .
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(COMPAT_PY) -c 'import torch; print("torch", torch.__version__)'
	$(COMPAT_PY) -m pytest $(COMPAT_PYTEST_ARGS) $(CORE_TESTS)

train: setup
	$(PY) -m train.run_default

# DP-SGD (configs/dp.yaml): the last two lines are the privacy statement and the test accuracy.
train-dp: setup
	$(PY) -m train.run_default --config configs/dp.yaml

bench: setup
	$(PY) -m benchmarks.bench

clean:
	rm -rf $(VENV) $(COMPAT_VENV) lightning_logs runs .pytest_cache .mypy_cache .ruff_cache
