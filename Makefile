# Two commands do all the set-up on a fresh machine:
#   make demo   `nodeorch dev`: three agents on loopback with a demo desired state and live status
#   make test   lint, type-check and the whole test suite
#   make gossip-demo   the gossip layer alone: members converging, a kill -9, a restart, a leave
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo gossip-demo test lint typecheck unit sim integration bench-gossip clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "nodeorch needs Python >= 3.11 (found $$($(PYTHON) --version 2>&1)); set PYTHON=..."; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { echo "cannot create a virtual environment: install python3-venv"; exit 2; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev,bench]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/nodeorch dev --nodes 3

gossip-demo: $(STAMP)
	$(PY) -m gossip demo --nodes 5

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) lint typecheck
	@scripts/provision-test-host
	$(PY) -m pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

sim: $(STAMP)
	$(PY) -m pytest -q tests/sim

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

bench-gossip: $(STAMP)
	$(PY) bench/gossip all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
