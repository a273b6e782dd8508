# The two commands of the README:
#   make run    a fresh machine to a running platform on the embedded default: the demo
#               (platform, simulated market, demo users, dashboard on http://127.0.0.1:8000)
#   make test   the development dependencies, the linters and the whole test suite
# Both install from pyproject.toml pinned by requirements.lock, into .venv, and build the
# dashboard's assets from package-lock.json (npm).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
VENDOR := src/tradeloom/web/static/vendor/lightweight-charts.standalone.production.js

.PHONY: run test install install-dev lint unit lock

run: install
	$(BIN)/tradeloom demo

test: install-dev lint
	$(BIN)/pytest

install: $(STAMP) $(VENDOR)
install-dev: $(DEVSTAMP) $(VENDOR)

$(VENDOR): package.json package-lock.json scripts/build_assets.py | $(BIN)/python
	npm ci --no-audit --no-fund --loglevel=error
	$(BIN)/python scripts/build_assets.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(PIP) install --quiet -c requirements.lock -e .
	touch $@

$(DEVSTAMP): $(BIN)/python pyproject.toml requirements.lock
	$(PIP) install --quiet -c requirements.lock -e ".[dev]"
	touch $@ $(STAMP)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install-dev
	$(BIN)/pytest tests/unit

# Re-pin every dependency to what the development environment has now.
lock: install-dev
	$(PIP) freeze --exclude-editable | grep -v '^tradeloom' > requirements.lock
