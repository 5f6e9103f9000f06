# Two entry points for a fresh machine (each does all set-up first):
#   make demo   - install into .venv and run the main job (`twin demo`: synthetic patient ->
#                 calibration -> predicted dose, schedules, dose map, HTML report)
#   make test   - install into .venv and run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/twin demo --quick --output twin-demo-output --force

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_simulate.py
