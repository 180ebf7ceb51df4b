# The two commands of the README, and what they need. Everything lands in a virtual environment
# of the project's own ($(VENV)); nothing is installed system-wide.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo bench install

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Set up and run the test suite (SQLite; set HOTCLICKS_TEST_DATABASE_URL for PostgreSQL).
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

## Set up and run the demo: upstream sink, relay and example app on SQLite.
demo: $(VENV)/.installed
	$(PY) -m example_app.demo $(DEMO_ARGS)

## Run the benchmarks and print their ratios.
bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -r bench/requirements.txt
	PATH="$(abspath $(VENV))/bin:$$PATH" bench/run
