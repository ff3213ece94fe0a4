# publicai_lab — the two commands: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-core
TSTAMP  := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench lab clean help

help:
	@echo "make demo   - create .venv, install, simulate scenarios/publicai-2025.yaml, write out/demo/report.md"
	@echo "make test   - install everything the tests need and run the whole suite"
	@echo "make bench  - run the benchmarks under benchmarks/ (prints figures)"
	@echo "make clean  - remove .venv and out/"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/publicai-lab simulate scenarios/publicai-2025.yaml --out out/demo

test: $(TSTAMP)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS) tests $(if $(wildcard notebooks/*.ipynb),--nbmake notebooks,)

test-fast: $(TSTAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/sim_speed.py

clean:
	rm -rf $(VENV) out
