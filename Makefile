# lightning-viz: `make demo` and `make test` each set everything up from a fresh clone.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# One stamp per install: the demo needs the package and scikit-learn (its digits data) only; the tests
# need the dev extra (pytest, the real loggers, the browser driver); the benchmark adds its peers.
DEMO   := $(VENV)/.installed-demo
DEV    := $(VENV)/.installed-dev
BENCH  := $(VENV)/.installed-bench

.PHONY: demo test lint format bench gpu-check clean

$(VENV)/.created:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run 'make PYTHON=python3 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

$(DEMO): pyproject.toml $(VENV)/.created
	$(PIP) install --quiet -e ".[examples]"
	touch $@

$(DEV): pyproject.toml $(VENV)/.created
	$(PIP) install --quiet -e ".[dev]"
	touch $@ $(DEMO)

$(BENCH): pyproject.toml $(DEV)
	$(PIP) install --quiet -e ".[dev,bench]"
	touch $@

demo: $(DEMO)
	$(VENV)/bin/lightning-viz fit --config configs/quickstart.yaml
	@echo
	@echo "Pictures: runs/quickstart/version_*/viz/  (TensorBoard: $(VENV)/bin/tensorboard --logdir runs)"

# pytest exits 5 when it collects no test: that must fail, and it does (any non-zero exit fails make).
# The suite runs in PYTEST_WORKERS processes (pytest-xdist); most tests wait on one core, the subprocess
# and multi-process ones on several. PYTEST_WORKERS=0 runs it in this process.
# Tests marked `alone` measure pictures drawn while every core trains: with another test's processes on the
# same cores they measure the load instead, so they run after the rest, one at a time. PYTEST_ARGS (a file,
# -k ...) runs what it selects in one pass.
PYTEST_WORKERS ?= 2
test: $(DEV)
ifeq ($(strip $(PYTEST_ARGS)),)
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) -m "not alone"
	$(PY) -m pytest -q -p no:cacheprovider -m alone
else
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) $(PYTEST_ARGS)
endif

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(BENCH)
	$(PY) -m benchmarks.run

# The CUDA tests and the GPU benchmark rows in one command (at most 6 minutes on one GPU; docs/performance.md).
# Without a CUDA device: one line says so, the CPU variants and a dry run run, and it exits 0. On a bare GPU
# machine with no network, `make gpu-check PY=python3` uses that interpreter as it is: a PY given on the
# command line skips the venv and its installs.
GPU_DEPS := $(if $(filter command line environment,$(origin PY)),,$(DEV))
gpu-check: $(GPU_DEPS)
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf runs lightning_logs .pytest_cache
