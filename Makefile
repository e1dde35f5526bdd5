# The two set-up commands (see README): `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.k2-installed

.PHONY: services demo test lint typecheck unit golden clean prometheus

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/k2 demo

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck services
	$(BIN)/pytest

# Distributed-mode services for the integration tests, and the Spark test's Iceberg/JDBC jars: Maven Central jars
# into ~/.m2 and ~/.cache/k2, PostgreSQL via apt-get when missing (the fixtures fetch lazily too; this fails early
# and clearly).
services: $(STAMP)
	$(BIN)/k2 dev fetch

golden: $(STAMP)
	$(BIN)/python -m k2.schema.golden

clean:
	rm -rf $(VENV) k2-data .pytest_cache .mypy_cache .ruff_cache

# Prometheus + promtool (Debian's package, unpacked under ~/.cache/k2; the tests fetch it themselves too).
prometheus:
	bash deploy/scripts/fetch-prometheus.sh
