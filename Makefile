# lightning-viz: `make demo` and `make test` each set everything up from a fresh clone.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run 'make PYTHON=python3 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightning-viz fit --config configs/quickstart.yaml
	@echo
	@echo "Pictures: runs/quickstart/version_*/viz/  (TensorBoard: $(VENV)/bin/tensorboard --logdir runs)"

# pytest exits 5 when it collects no test: that must fail, and it does (any non-zero exit fails make).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PIP) install --quiet -e ".[dev,bench]"
	$(PY) -m benchmarks.run

clean:
	rm -rf runs lightning_logs .pytest_cache
