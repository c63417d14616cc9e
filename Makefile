# The two set-up commands of INTERFACE.md: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-pure install imaptest bench bench-peers bench-imap clean install-system fuzz fuzz-atheris

# The production install (README.md, "Production"; done by etc/install-system.sh): a venv on
# the system Python in PREFIX, main.cf/master.cf in SYSCONFDIR (existing files are kept),
# the systemd unit in UNITDIR, then `mailctl init`. DESTDIR stages it all for a package.
PREFIX        ?= /opt/mailhouse
SYSCONFDIR    ?= /etc/mailhouse
LOCALSTATEDIR ?= /var/lib/mailhouse
LOGDIR        ?= /var/log/mailhouse
UNITDIR       ?= /etc/systemd/system
SYSTEM_PYTHON ?= /usr/bin/python3
DESTDIR       ?=

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py store/_index.pyx
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python setup.py -q build_ext --inplace
	touch $(STAMP)

# Bytecode for the code the workers import: every worker start would compile it otherwise
# when PYTHONDONTWRITEBYTECODE is set (about 0.3 s of CPU a worker). Quick when up to date.
install: $(STAMP)
	@$(BIN)/python -m compileall -q master workers store

run: install
	$(BIN)/mailctl -c etc/dev init --demo
	exec $(BIN)/master -c etc/dev/master.cf

# The suite runs in TEST_JOBS processes (pytest-xdist): most tests wait on real servers and
# sockets, not on the CPU. TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= 3
PYTEST    = $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadgroup

test: install imaptest
	$(PYTEST) tests

# The same suite with the pure-Python index (the reference the compiled one is checked against),
# less what does not depend on the index or repeats what the rest covers: the tests that
# install mailhouse anew, the parsers' fuzzers, the imaptest compliance run and outgoing mail
# (the smtp service never opens the index; what it delivers is stored as the delivery tests do).
test-pure: install
	MAILHOUSE_PURE_PYTHON=1 $(PYTEST) -m "not installs and not imaptest" --ignore=tests/fuzz \
		--ignore=tests/unit/workers/smtp --ignore=tests/integration/test_smtp_service.py \
		--ignore=tests/integration/test_outbound.py tests

# Dovecot's imaptest, which tests/integration/test_imaptest.py runs against imapd: built once from
# ../shared/tools/imaptest into ~/.cache/imaptest (~25 s; apt-get of its build deps if root and
# missing, unless IMAPTEST_NO_APT=1). Prints one line; never fails: without it the test skips.
imaptest: install
	@$(BIN)/python -m tests.integration.imaptest_support build

# Benchmarks are not tests: each prints its numbers (pytest-benchmark tables, JSON lines).
bench: install
	$(BIN)/python -m pytest -q bench/bench_index.py bench/bench_queue.py --benchmark-only
	$(BIN)/python bench/smtp_load.py
	$(BIN)/python bench/pop3_load.py
	$(BIN)/python bench/idle_connections.py

# Mailhouse against Postfix, Dovecot and aiosmtpd started by ../shared/anchors (install them as its
# README says; without them, against the disk floor only); writes its table into bench/README.md.
# PEERS_ARGS=--quick for a smoke run that only prints.
PEERS_ARGS ?=

bench-peers: install
	$(BIN)/python bench/peers.py $(PEERS_ARGS)

# IMAP on a 100,000-message folder, mailhouse and (root, if installed) a private Dovecot (bench/imap_load.py;
# IMAP_ARGS=--quick: 10,000 messages; --no-dovecot: mailhouse alone).
IMAP_ARGS ?=

bench-imap: install
	$(BIN)/python bench/imap_load.py $(IMAP_ARGS)

# Fuzzing (README "Fuzzing"): the property fuzzers of tests/fuzz with FUZZ_SCALE times the
# examples they get in `make test`, then every atheris target for FUZZ_SECONDS (CI: 20 s).
FUZZ_SCALE   ?= 20
FUZZ_SECONDS ?= 300

fuzz: install
	MAILHOUSE_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install -q atheris || true
	$(BIN)/python -m tests.fuzz.harness $(FUZZ_SECONDS)

fuzz-atheris: install
	$(BIN)/python -m tests.fuzz.harness $(FUZZ_SECONDS)

install-system:
	PREFIX='$(PREFIX)' SYSCONFDIR='$(SYSCONFDIR)' LOCALSTATEDIR='$(LOCALSTATEDIR)' LOGDIR='$(LOGDIR)' \
	UNITDIR='$(UNITDIR)' SYSTEM_PYTHON='$(SYSTEM_PYTHON)' DESTDIR='$(DESTDIR)' sh etc/install-system.sh

clean:
	rm -rf $(VENV) build *.egg-info store/*.so store/_index.c
