# The two set-up commands (see README): `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.k2-installed

.PHONY: services demo test lint typecheck unit golden clean prometheus chromium web

# The dashboard's chart library (TradingView Lightweight Charts) from npm, pinned by web/package-lock.json,
# copied into the package so `k2 serve` serves it itself (works offline, no CDN).
CHART_JS := src/k2/api/static/vendor/lightweight-charts.standalone.production.js

$(STAMP): pyproject.toml $(CHART_JS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(CHART_JS): web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	mkdir -p $(dir $(CHART_JS))
	cp web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js $(CHART_JS)
	cp web/node_modules/lightweight-charts/LICENSE $(dir $(CHART_JS))LICENSE-lightweight-charts

web: $(CHART_JS)

demo: $(STAMP)
	$(BIN)/k2 demo

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck services chromium
	$(BIN)/pytest

# Distributed-mode services for the integration tests, and the Spark test's Iceberg/JDBC jars: Maven Central jars
# into ~/.m2 and ~/.cache/k2, PostgreSQL via apt-get when missing (the fixtures fetch lazily too; this fails early
# and clearly).
services: $(STAMP)
	$(BIN)/k2 dev fetch

golden: $(STAMP)
	$(BIN)/python -m k2.schema.golden

# Headless Chromium for the dashboard test (Debian's package, like PostgreSQL and Prometheus above).
chromium:
	bash deploy/scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) k2-data .pytest_cache .mypy_cache .ruff_cache web/node_modules src/k2/api/static/vendor

# Prometheus + promtool (Debian's package, unpacked under ~/.cache/k2; the tests fetch it themselves too).
prometheus:
	bash deploy/scripts/fetch-prometheus.sh
