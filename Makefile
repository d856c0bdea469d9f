# Two entry points (see README): `make repro` runs the pipeline, `make test` runs the tests.
# Both install the pinned environment into .venv first (once; re-done when the lock changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install repro test test-extended test-cluster study tracking-server ui browser
install: $(VENV)/.installed

# uv installs the lock in about 3 minutes on the 2-core machine where pip took 30 (pip is CPU-bound there,
# unpacking and byte-compiling torch's 4 GB of CUDA wheels); pip stays the fallback if uv cannot be had.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (as on the CI machines) Python never caches what it
# compiles, so every process (each stage, each Ray worker) compiled torch._dynamo, sympy and timm from source again:
# `import timm` took 12.2 s of CPU instead of 5.4 s.
UV_VERSION := 0.13.9

$(VENV)/.installed: requirements.lock pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	( $(BIN)/pip install --disable-pip-version-check -q uv==$(UV_VERSION) && \
	  $(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -r requirements.lock ) || \
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	touch $@

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The ablation study (variants x seeds, see studies/ablation/study.yaml): a DVC pipeline of its own.
study: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro studies/ablation/dvc.yaml

# ruff first (lint, then the formatter's check: pyproject.toml [tool.ruff]), then the tests.
LINTED := adaskip tests benchmarks pipelines examples
test: install
	$(BIN)/ruff check $(LINTED) && $(BIN)/ruff format --check -q $(LINTED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# Ray worker-failure, crashing-trial, study-cell and SIGTERM/resume scenarios, the MobileNetV2, DeiT and Swin pipeline
# runs and exports, the secrets scan and the MLflow UI in headless Chromium (about an hour on 2 cores).
test-extended: install browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m extended

# Debian's Chromium and its driver, for the MLflow UI test (tests/test_ui.py drives them through Selenium, headless).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ( apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver )

# The two-host harness (tests/multihost.py): Ray head and worker in network namespaces with private disks; root.
# -rP: the figures passing tests print (pipeline and study times on two hosts, the concurrency ratio) are shown.
test-cluster: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m cluster -rP

# MLflow's UI over mlflow.db, opened on the training runs (adaskip ui: no GenAI job workers; prints the addresses).
ui: install
	$(BIN)/adaskip ui

# An MLflow tracking server for this laptop on 127.0.0.1:5000 (PostgreSQL backend, proxied artifacts; state in
# .mlflow-server/). Clients: MLFLOW_TRACKING_URI=http://127.0.0.1:5000. Cluster heads: see docs/serving.md "A tracking server".
tracking-server: install
	$(BIN)/python -m adaskip.ops.tracking_server --state .mlflow-server --host 127.0.0.1 --port 5000
