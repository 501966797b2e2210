# One virtual environment, .venv, holds everything; nothing is installed system-wide.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install train test test-fast lint format results bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes. torch is installed first and pinned:
# torch==2.13.0 resolves to a local CPU wheel here, anything else may pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

train: install
	$(VENV)/bin/ctr train --config configs/deepfm_movielens.yaml

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check ctr experiments tests benchmarks
	$(VENV)/bin/ruff format --check ctr experiments tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix ctr experiments tests benchmarks
	$(VENV)/bin/ruff format ctr experiments tests benchmarks

results: install
	$(VENV)/bin/ctr results --jobs 2 --no-track --models attention_deepfm,xdeepfm,deepfm,fm,lr --override training.full_ranking=false

bench: install
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/models.py
	$(PY) benchmarks/training.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache checkpoints mlruns mlartifacts mlflow.db
