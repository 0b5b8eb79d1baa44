# The two commands of the README: `make run` and `make test`. Both create .venv on first use
# from the pinned requirements.lock (runtime), requirements-embedded.lock (the embedded PostgreSQL
# `make run` and the tests start, not in the image) and requirements-dev.lock (tests, tools, lint),
# so a fresh machine needs only python3 and make.
# Beside them: `make lint` (ruff, mypy, import contracts; run by CI before the tests), `make docs`
# (the documentation site, docs/ and mkdocs.yml, built with --strict into site/; CI runs it after
# lint), `make bench`, `make scale-bench` and
# `make bank-test` (slow; not part of the suite). Pass options with ARGS="--seconds 5 ...".
# `make image-test` builds the Dockerfile with podman and checks the image and the compose stack
# (tools/image_test.sh; root, Debian). `make restore-drill` backs up a scratch cluster, restores it
# to an instant and proves the ledger equal (tools/restore_drill.py; PostgreSQL 15's binaries).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install run test test-slow test-all lint docs bench bank-test image-test restore-drill clean cluster-deps cluster-up cluster-down cluster-status failover-test

$(STAMP): requirements.lock requirements-embedded.lock requirements-dev.lock pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.lock -r requirements-embedded.lock -r requirements-dev.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .
	$(VENV)/bin/pip install --quiet --no-deps -e clients/python
	touch $(STAMP)

install: $(STAMP)

# The synchronous client is generated from the asyncio one (clients/python/unasync_client.py): the
# install writes it, and so does this rule whenever async_client.py has changed since.
SYNC_CLIENT := clients/python/src/wallet_client/client.py
$(SYNC_CLIENT): clients/python/src/wallet_client/async_client.py clients/python/unasync_client.py | $(STAMP)
	$(VENV)/bin/python clients/python/unasync_client.py
	touch $@

run: $(STAMP)
	$(VENV)/bin/wallet serve

# The suite runs on $(TEST_WORKERS) pytest-xdist workers, each with a database of its own: it mostly
# waits (services starting, timeouts, PostgreSQL), so more workers than cores pays. `make test` is
# the fast tier, every test not marked `slow`; `make test-slow` the slow tier (schemathesis's full
# phases, the bank test, the browser, the benchmark end to end, the hypothesis model), which CI
# runs after it; `make test-all` both in one run (the slow tests first, the rest around them).
TEST_WORKERS ?= 4
PYTEST := $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadgroup
# Each worker imports the tests (rewriting their asserts) and the package: compiled once and kept
# in __pycache__, Python's default, which PYTHONDONTWRITEBYTECODE=1 in an environment turns off
# (then every worker compiles them all again, at every run: 3 s of CPU each).
test test-slow test-all: export PYTHONDONTWRITEBYTECODE :=
test: $(STAMP) $(SYNC_CLIENT)
	$(PYTEST) -m "not slow" $(ARGS)

# A handful of long tests: --dist worksteal, so that a worker done early takes the next one
# rather than another worker running two in a row (loadgroup queued two per worker at once).
test-slow: $(STAMP) $(SYNC_CLIENT)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist worksteal -m slow $(ARGS)

test-all: $(STAMP) $(SYNC_CLIENT)
	$(PYTEST) $(ARGS)

lint: $(STAMP) $(SYNC_CLIENT)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(VENV)/bin/python -m tools.bench $(ARGS)

bank-test: $(STAMP) $(SYNC_CLIENT)
	$(VENV)/bin/python -m tools.bank_test $(ARGS)

image-test: $(STAMP) $(SYNC_CLIENT)
	VENV=$(VENV) bash tools/image_test.sh

restore-drill: $(STAMP)
	$(VENV)/bin/python -m tools.restore_drill $(ARGS)

clean:
	rm -rf $(VENV) .venv-cluster .wallet-data .pytest_cache .hypothesis .mypy_cache .ruff_cache site

# Chromium for the console's browser test (tests/console), from Debian's package when it is
# missing and apt-get is there (CI runs as root; elsewhere through sudo). The test skips, saying
# so, only where no chromium can be found.
.PHONY: browser-deps
browser-deps:
	@if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then \
	    echo "chromium: $$(command -v chromium || echo /usr/bin/chromium)"; \
	elif command -v apt-get >/dev/null; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; \
	else \
	    echo "no chromium and no apt-get: the console's browser test will be skipped"; \
	fi

# wrk and pgbench for `make bench` and its end-to-end tests (tests/test_bench.py), from Debian's
# packages when missing and apt-get is there. The tests skip, saying so, only where they cannot
# be found.
.PHONY: bench-deps
bench-deps:
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v pgbench >/dev/null || missing="$$missing postgresql-client"; \
	if [ -z "$$missing" ]; then \
	    echo "wrk: $$(command -v wrk), pgbench: $$(command -v pgbench)"; \
	elif command -v apt-get >/dev/null; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else \
	    echo "no$$missing and no apt-get: the benchmark's tests will be skipped"; \
	fi

# A local high-availability PostgreSQL cluster (tools/cluster.py): etcd, three Patroni members
# (synchronous_mode_strict), haproxy, all on 127.0.0.1; the URLs are printed by cluster-up and
# are in the README's "Cluster" section. cluster-deps installs etcd, haproxy and pgbouncer from
# Debian (pgbouncer for the suite's transaction-pooling test) and Patroni into .venv-cluster.
cluster-deps: $(STAMP)
	$(VENV)/bin/python -m tools.cluster deps

cluster-up: $(STAMP)
	$(VENV)/bin/python -m tools.cluster up $(ARGS)

cluster-down: $(STAMP)
	$(VENV)/bin/python -m tools.cluster down $(ARGS)

cluster-status: $(STAMP)
	$(VENV)/bin/python -m tools.cluster status $(ARGS)

# The bank test's mix against a cluster of its own while primaries and replicas are killed
# (tools/failover_test.py); a few minutes.
failover-test: $(STAMP)
	$(VENV)/bin/python -m tools.failover_test $(ARGS)

# What the service costs as the ledger grows (tools/scale_bench.py, docs/SCALING.md): an empty
# ledger against one loaded with N transactions through the posting core (default 1,000,000 on
# 2,000 users: about 15 minutes here), writes, reads, reports, `wallet verify` and the live
# audit's catch-up in one table. E.g. make scale-bench ARGS="--transactions 100000 --seconds 5".
.PHONY: scale-bench
scale-bench: $(STAMP)
	$(VENV)/bin/python -m tools.scale_bench $(ARGS)
