# The two set-up commands of INTERFACE.md: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-pure install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py store/_index.pyx
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python setup.py -q build_ext --inplace
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/mailctl -c etc/dev init --demo
	exec $(BIN)/master -c etc/dev/master.cf

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The same suite with the pure-Python index (the reference the compiled one is checked against).
test-pure: install
	MAILHOUSE_PURE_PYTHON=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

# Benchmarks are not tests: each prints its numbers (pytest-benchmark tables, JSON lines).
bench: install
	$(BIN)/python -m pytest -q bench/bench_index.py bench/bench_queue.py --benchmark-only
	$(BIN)/python bench/smtp_load.py
	$(BIN)/python bench/pop3_load.py
	$(BIN)/python bench/idle_connections.py

clean:
	rm -rf $(VENV) build *.egg-info store/*.so store/_index.c
