# Every target sets up what it needs on a fresh machine: the venv, the package, Debian tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-tools lint bench soak clean setup

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@echo "the filekv command is $(BIN)/filekv (or: source $(BIN)/activate, then filekv --help)"
	$(BIN)/filekv serve

# docker-compose (Debian's) checks compose.yaml; installed here so a fresh machine has it.
# chromium (Debian's, driven by Playwright: never `playwright install`) runs tests/browser, and
# curl the README's examples (tests/test_readme.py); without chromium those tests fail under CI.
test-tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
		|| echo "warning: could not install docker-compose; the compose test will say so"; }
	@{ command -v chromium >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; } || { \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium curl >/dev/null) \
		|| echo "warning: could not install chromium and curl; the browser and README tests will say so"; }

# The lint runs first: a test run on code that does not type-check or format is not a pass.
# Two workers (pytest-xdist), a test file each at a time so module-scoped servers start once:
# on the 2-core machines 1546 tests took 432 s this way against 718 s in one process.
# compileall first: this environment may set PYTHONDONTWRITEBYTECODE, and then each of the
# hundreds of processes the suite starts (servers, CLI calls, crash children) compiled every
# filekv module again; that cost about a third of a second of CPU per process here.
test: lint test-tools
	$(BIN)/python -m compileall -q src tests
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/engine.py

soak: $(STAMP)
	FILEKV_SOAK=1 $(BIN)/python -m pytest -q -s --timeout 1800 tests/reliability tests/engine

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
