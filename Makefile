# The verbs a user needs. `make run` and `make test` work on a fresh clone:
# they create .venv when it is missing, install the project once (re-installing
# only when pyproject.toml changes) and then run the pipeline or the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# The torch wheels that lie on these machines' disks; override on other machines,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# Stage commands in dvc.yaml call `python`: put the venv first on PATH so DVC
# runs them with the project's interpreter.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: install run test test-fast lint format ui team-up team-down clean-venv

install: $(STAMP)

# pip byte-compiles the ~17,500 modules it installs one at a time; compileall does it on every core
# (half the time on 2 cores). Compiled they must be: where PYTHONDONTWRITEBYTECODE is set, every
# process would otherwise compile all it imports, again. compileall's exit status is ignored as pip
# ignores it: torch ships one Python 3.12-only test module.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

run: $(STAMP)
	dvc repro

# Two pytest-xdist workers, each taking whole files (a file's tests share a module fixture and
# some run in order); conftest.py gives each worker its share of the cores. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: $(STAMP)
	pytest $(PYTEST_PARALLEL)

test-fast: $(STAMP)
	pytest $(PYTEST_PARALLEL) -m 'not slow'

# ruff, configured in pyproject.toml: the formatter's verdict first, then the linter's
lint: $(STAMP)
	ruff format --check .
	ruff check .

format: $(STAMP)
	ruff format .
	ruff check --fix .

# The MLflow UI over the project's store (the one every stage and experiment logs to).
# With MLFLOW_TRACKING_URI pointing at a server, that server already is the UI.
ui: $(STAMP)
	@case "$${MLFLOW_TRACKING_URI:-}" in \
	  http://*|https://*) echo "runs are on the tracking server: open $$MLFLOW_TRACKING_URI" ;; \
	  *) exec mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
	       --default-artifact-root "$(CURDIR)/mlartifacts" --host 127.0.0.1 --port 5000 ;; \
	esac

# A team's stack on loopback: PostgreSQL, a SeaweedFS S3 store and an MLflow server with basic
# auth, in the state folder TEAM_DIR; its bucket becomes this repository's DVC remote
# (.dvc/config.local). `team-up` prints what to export; docs/scaling.md has the details.
TEAM_DIR ?= .team
team-up: $(STAMP)
	cvae team up $(TEAM_DIR)

team-down: $(STAMP)
	cvae team down $(TEAM_DIR)

clean-venv:
	rm -rf $(VENV)
