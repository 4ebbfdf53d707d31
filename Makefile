# The two commands of the README. Everything else is `python -m pipeline --help`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Every dependency (runtime, test, and pip/setuptools/wheel themselves) installs from the
# lock, hash-checked; `make lock` regenerates it after a change to pyproject.toml.
LOCK := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
LOCK_TOOLS := var/lock-tools
PIP_TOOLS := pip-tools==7.6.2
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-find-links --no-emit-index-url $(LOCK_ARGS)

.PHONY: run test check clean lock

$(VENV)/.installed: pyproject.toml requirements.in $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## Regenerate requirements.lock (runtime + tools + test) and requirements-runtime.lock (the
## worker image's subset, same versions) from pyproject.toml and requirements.in.
## Pins already in the lock are kept; `make lock LOCK_ARGS=--upgrade` moves all to the latest.
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet $(PIP_TOOLS)
	$(PIP_COMPILE) --extra tools --extra test -o $(LOCK) pyproject.toml requirements.in
	$(PIP_COMPILE) -c $(LOCK) -o $(RUNTIME_LOCK) pyproject.toml requirements.in

## Start local Kafka and Redis, a worker, and a short simulated live event.
run: $(VENV)/.installed
	$(PY) -m pipeline run

## Style and types (ruff, mypy: strict for pipeline/engine and agents), then the whole
## test suite (it starts its own Kafka and Redis on free ports).
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

## Only the style and type checks.
check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	-$(PY) -m pipeline dev down
	rm -rf $(VENV) var
