# freestack: `make demo` runs the demo pipeline end to end; `make test` runs the tests.
# Every target bootstraps what it needs (.venv with torch==2.13.0 first) on a fresh clone.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.freestack-installed
# the model server's own environment: seldon-core 1.17.1's pins cannot live beside Airflow 3
SERVING_VENV := .venv-serving
SERVING_STAMP := $(SERVING_VENV)/.freestack-installed
# the MLServer runtime's environment (Open Inference Protocol): its pins cannot live beside seldon-core's
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.freestack-installed
# JupyterLab's environment (`make notebook`; its kernel is .venv's ipykernel): beside Airflow, its event
# schemas' format checks (jupyter_events needs jsonschema's format-nongpl extra, rfc3987-syntax) would load
# in every process that imports Airflow, about 1.5 s of CPU each (half of `import airflow.sdk`)
NOTEBOOK_VENV := .venv-notebook
NOTEBOOK_STAMP := $(NOTEBOOK_VENV)/.freestack-installed
JUPYTERLAB := jupyterlab>=4.2,<5

# the embedded default: everything lives inside the project, git-ignored
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export FREESTACK_HOME ?= $(CURDIR)
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__EXECUTOR := LocalExecutor
export AIRFLOW__API__HOST := 127.0.0.1
# the API server's port: AIRFLOW_PORT when given (`make up AIRFLOW_PORT=8090`), else the port of the stack that
# runs (`make up` and `make demo` record it in $(AIRFLOW_HOME)/standalone.json), else 8080 (freestack.embedded)
export WANDB_MODE ?= offline
export WANDB_DIR ?= $(CURDIR)/.freestack/wandb
export WANDB_DATA_DIR ?= $(CURDIR)/.freestack/wandb/data
export WANDB_CACHE_DIR ?= $(CURDIR)/.freestack/wandb/cache
export WANDB_CONFIG_DIR ?= $(CURDIR)/.freestack/wandb/config
# Hugging Face's cache (pretrained bases, Hub tokenizers) in the project, not the home folder
export HF_HOME ?= $(CURDIR)/.freestack/huggingface
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# no wheel cache beside the four environments: on a fresh machine it only doubles the disk they take
export PIP_NO_CACHE_DIR := 1

.PHONY: help venv serving-venv mlserver-venv notebook-venv demo airflow notebook test test-stock test-fast test-slow test-scaleout scaleout-deps browser-deps up down lint docs bench clean

help:
	@echo "make demo   - start Airflow, land the demo data, backfill ingest and trigger training under the real scheduler"
	@echo "make test   - install everything and run the whole test suite"
	@echo "make test-scaleout - only the scaled-out stack (Postgres, Celery + Redis, S3) tests"
	@echo "make up     - start airflow standalone on http://127.0.0.1:$(or $(AIRFLOW_PORT),8080) (make down stops it and the model servers)"
	@echo "make airflow ARGS=\"dags list\" - any airflow command against this project's instance (= freestack airflow ...)"
	@echo "make notebook - JupyterLab on http://127.0.0.1:$(NOTEBOOK_PORT) with the project's .venv as its kernel (docs/notebooks/)"
	@echo "make lint   - ruff, the import contracts (lint-imports) and the docs build"
	@echo "make docs   - the docs site into .freestack/site (warnings are errors)"
	@echo "make bench  - run the benchmarks in bench/"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,scaleout,notebook]'
	# the notebook's kernel, "freestack (.venv)", in .venv itself: `.venv/bin/jupyter execute` and `make notebook` find it
	$(BIN)/python -m ipykernel install --sys-prefix --name freestack --display-name "freestack (.venv)" >/dev/null
	touch $@

serving-venv: $(SERVING_STAMP)

$(SERVING_STAMP): plugins/freestack_server/requirements-seldon.txt
	test -x $(SERVING_VENV)/bin/python || $(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/pip install -q --upgrade pip
	$(SERVING_VENV)/bin/pip install -q torch==2.13.0
	$(SERVING_VENV)/bin/pip install -q -r plugins/freestack_server/requirements-seldon.txt
	touch $@

mlserver-venv: $(MLSERVER_STAMP)

$(MLSERVER_STAMP): plugins/freestack_server/requirements-mlserver.txt
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q --upgrade pip
	$(MLSERVER_VENV)/bin/pip install -q torch==2.13.0
	$(MLSERVER_VENV)/bin/pip install -q -r plugins/freestack_server/requirements-mlserver.txt
	touch $@

notebook-venv: $(NOTEBOOK_STAMP)

$(NOTEBOOK_STAMP):
	test -x $(NOTEBOOK_VENV)/bin/python || $(PYTHON) -m venv $(NOTEBOOK_VENV)
	$(NOTEBOOK_VENV)/bin/pip install -q --upgrade pip
	$(NOTEBOOK_VENV)/bin/pip install -q '$(JUPYTERLAB)'
	touch $@

$(AIRFLOW_HOME)/airflow.db: $(STAMP)
	mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate >/dev/null

demo: $(STAMP) $(SERVING_STAMP) $(AIRFLOW_HOME)/airflow.db
	$(BIN)/python -m freestack.cli demo

# test files run on TEST_WORKERS pytest-xdist workers (a file stays on one worker: its module fixtures,
# the docs sandbox's demo say, are built once), the costliest first (tests/durations.json, in place of
# xdist's order by test count); TEST_WORKERS=0 runs them in this process. Every test phase has a 150 s
# budget, and no test may be skipped for want of something `make test` installs (tests/support/timing.py)
# Two on two cores: the suite keeps both busy (with three, tests were a third slower each and an Airflow API
# server left a request unanswered for 60 s)
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --forbid-skips

# the project's own modules byte-compiled first (pip does it for what it installs): where
# PYTHONDONTWRITEBYTECODE is set, as in CI, each of the suite's processes would compile them again
test: $(STAMP) $(SERVING_STAMP) $(MLSERVER_STAMP) $(NOTEBOOK_STAMP) scaleout-deps browser-deps
	$(BIN)/python -m compileall -q plugins dags include bench >/dev/null
	$(PYTEST) --durations=25 tests

# only the scheduler's tests on stock Airflow (the runtime wing's speed-ups off), which `make test` runs
# beside the same tests with them on (tests/e2e/test_backfill_standalone.py's both_modes). The speed-ups
# live in the scheduler only, so dag.test() (tests/dags) runs the same either way
test-stock: $(STAMP) $(SERVING_STAMP)
	$(PYTEST) tests/e2e -k stock

# the scaled-out stack's servers, natively (tests/scaleout): PostgreSQL and Redis from Debian packages
# (SeaweedFS comes from PyPI with the dev extra); installed only when missing
scaleout-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql redis-server; \
	fi

# the browser the web pages are tested in (tests/e2e/test_wandb_ui.py): Debian's Chromium, driven by
# Playwright (its own browser downloads are not used)
browser-deps:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; \
	fi

test-scaleout: $(STAMP) $(SERVING_STAMP) scaleout-deps
	$(BIN)/python -m pytest -q -ra -m scaleout tests

test-fast: $(STAMP) $(SERVING_STAMP) $(MLSERVER_STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow" tests

test-slow: $(STAMP) $(SERVING_STAMP) browser-deps
	$(BIN)/python -m pytest -q -ra -m slow tests

up: $(STAMP) $(SERVING_STAMP) $(AIRFLOW_HOME)/airflow.db
	$(BIN)/python -m freestack.cli up

down: $(STAMP)
	$(BIN)/python -m freestack.cli down

# any airflow command against the project's instance, e.g. make airflow ARGS="dags list"
airflow: $(STAMP)
	$(BIN)/python -m freestack.cli airflow $(ARGS)

# JupyterLab for the project's data and models (docs/notebooks/explore.ipynb), bound to 127.0.0.1: its kernel
# "freestack (.venv)" is the project's environment, so it sees the same settings as the tasks (AIRFLOW_HOME,
# FREESTACK_HOME, WANDB_*, HF_HOME above); Jupyter's own settings and runtime files stay inside the project too.
# Ctrl-C stops it (no confirmation asked)
NOTEBOOK_PORT ?= 8888
notebook: export JUPYTER_CONFIG_DIR ?= $(FREESTACK_HOME)/.freestack/jupyter/config
notebook: export JUPYTER_DATA_DIR ?= $(FREESTACK_HOME)/.freestack/jupyter/data
notebook: export JUPYTER_RUNTIME_DIR ?= $(FREESTACK_HOME)/.freestack/jupyter/runtime
notebook: export IPYTHONDIR ?= $(FREESTACK_HOME)/.freestack/ipython
notebook: export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
notebook: $(STAMP) $(NOTEBOOK_STAMP)
	mkdir -p $$JUPYTER_CONFIG_DIR $$JUPYTER_DATA_DIR $$JUPYTER_RUNTIME_DIR $$IPYTHONDIR .freestack/notebooks
	# a working copy (made once, kept with your edits): saving it leaves the tracked notebook as it is
	cp -n docs/notebooks/explore.ipynb .freestack/notebooks/explore.ipynb
	$(NOTEBOOK_VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(NOTEBOOK_PORT) --no-browser --ServerApp.answer_yes=True \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) --ServerApp.root_dir=$(CURDIR) .freestack/notebooks/explore.ipynb

lint: $(STAMP)
	$(BIN)/ruff format --check plugins dags tests bench include docs
	$(BIN)/ruff check plugins dags tests bench include docs
	$(BIN)/lint-imports --no-logo
	$(BIN)/xenon --max-absolute C plugins dags
	$(MAKE) --no-print-directory docs

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

bench: $(STAMP) $(SERVING_STAMP) $(MLSERVER_STAMP)
	$(BIN)/python -m bench.ingest.run
	$(BIN)/python -m bench.train.run --kind mlp
	$(BIN)/python -m bench.train.run --kind cnn --out bench/results/train_cnn.json
	$(BIN)/python -m bench.train.stream
	$(BIN)/python -m bench.train.loaded
	$(BIN)/python -m bench.train.finetune
	$(BIN)/python -m bench.score.run
	$(BIN)/python -m bench.sweep.run
	$(BIN)/python -m bench.data_api.run
	$(BIN)/python -m bench.serve.run
	$(BIN)/python -m bench.serve.address
	$(BIN)/python -m bench.serve.slow_clients --repeats 5 --worker-classes freestack,gthread
	$(BIN)/python -m bench.serve.openai
	$(BIN)/python -m bench.serve.lora_memory
	$(BIN)/python -m bench.serve.lora_batches
	$(BIN)/python -m bench.data_api.listing
	$(BIN)/python -m bench.orchestration.run
	$(BIN)/python -m bench.ui.run
	$(BIN)/python -m bench.report

clean:
	rm -rf .freestack .airflow
