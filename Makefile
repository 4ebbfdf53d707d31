# The two commands of the README. Everything else is `python -m pipeline --help`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

## Start local Kafka and Redis, a worker, and a short simulated live event.
run: $(VENV)/.installed
	$(PY) -m pipeline run

## The whole test suite (starts its own Kafka and Redis on free ports).
test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	-$(PY) -m pipeline dev down
	rm -rf $(VENV) var
