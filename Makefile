# One virtual environment, .venv, holds everything Python; the one system package,
# Debian's postgresql, is installed with it where missing (see postgres-server).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install postgres-server train test test-fast lint format results results-fair results-fair-check bench bench-env clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes. torch is installed first and pinned:
# torch==2.13.0 resolves to a local CPU wheel here, anything else may pull a CUDA build.
# postgres-server runs here, not as a prerequisite of install: a phony prerequisite
# would make `make -q install` report the install out of date forever.
$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory postgres-server
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

# PostgreSQL's server binaries, for `ctr server --backend postgres` and its tests:
# Debian's postgresql package, installed only where its binaries are missing and
# only where root or password-less sudo may install packages (else a note).
postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: no apt-get; install PostgreSQL's server binaries for ctr server --backend postgres"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	elif sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else \
		echo "note: run 'sudo apt-get install -y postgresql' for ctr server --backend postgres"; \
	fi

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

# Tracked in the experiment movielens-100k-results: through the server that
# MLFLOW_TRACKING_URI names, or else a `ctr server` (SQLite in ./mlflow-server)
# started for the command and stopped after it.
results: install
	CTR=$(VENV)/bin/ctr scripts/with-mlflow-server $(VENV)/bin/ctr results --jobs 2 --models attention_deepfm,xdeepfm,deepfm,fm,lr --override training.full_ranking=false

# The results table as a fair comparison (`ctr results --from-sweeps`): every model's
# config is first tuned with the same budget, a sweep of SWEEP_TRIALS trials (Optuna;
# tuning seed 0, validation only; sweeps results-<model>, continued if interrupted),
# then each winner is trained with seeds 1, 2, 3 as `results` trains the shipped configs.
# SWEEP_TRIALS=24 fits one night (~10 h) on 2 cores with --jobs 2: a trial takes about
# 1-3 min for lr and fm, 6 for deepfm, 15 for xdeepfm and attention_deepfm, so one trial
# of each model is ~41 min of trials, ~20 min two at a time; 24 of them ~8.2 h, plus
# ~1.2 h for the 15 seeded runs of the winners. Pruned trials stop early: the margin.
SWEEP_TRIALS ?= 24
results-fair: install
	CTR=$(VENV)/bin/ctr scripts/with-mlflow-server $(VENV)/bin/ctr results --from-sweeps --trials $(SWEEP_TRIALS) --jobs 2 --models attention_deepfm,xdeepfm,deepfm,fm,lr --override training.full_ranking=false

# The same path in minutes, as a check that it runs: 2 trials per model of 1 epoch, seed 1,
# sweeps check-<model>; its own server, table and JSON in sweeps/check (the README and
# results/ stay as they are).
results-fair-check: install
	mkdir -p sweeps/check && cp README.md sweeps/check/README.md
	CTR=$(VENV)/bin/ctr CTR_SERVER_DIR=sweeps/check/mlflow-server scripts/with-mlflow-server $(VENV)/bin/ctr results --from-sweeps --trials 2 --sweep-prefix check --seeds 1 --jobs 2 --readme sweeps/check/README.md --output sweeps/check/results.json --override training.num_epochs=1 training.full_ranking=false training.test_full_ranking=false

# The benchmarks run in their own environment, .venv-bench: the project plus
# DeepCTR-Torch (the published library they are compared with), which is no
# dependency of ctr. deepctr-torch goes in with --no-deps (its requirements would
# replace the pinned torch); what it imports (numpy, scikit-learn, tqdm, requests,
# packaging) comes with the project's own dependencies.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet "torch==2.13.0"
	$(BENCH_VENV)/bin/pip install --quiet -e .
	$(BENCH_VENV)/bin/pip install --quiet --no-deps "deepctr-torch==0.3.0"
	touch $(BENCH_STAMP)

bench: bench-env
	$(BENCH_PY) benchmarks/data_pipeline.py
	$(BENCH_PY) benchmarks/models.py
	$(BENCH_PY) benchmarks/training.py
	$(BENCH_PY) benchmarks/training.py --model xdeepfm
	$(BENCH_PY) benchmarks/training.py --model attention_deepfm

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache checkpoints mlruns mlartifacts mlflow.db mlflow-server
