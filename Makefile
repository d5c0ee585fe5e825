# s3fast: every install step lives here, so a fresh clone needs only `make bench` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.s3fast-installed

.PHONY: venv test test-fast test-metaflow-suite bench bench-quick soak lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "s3fast needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,bench,lint]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The unit tests: no server, no network; well under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m unit

# Metaflow's own S3 suite against s3fast on a local SeaweedFS (~4 min). SUITE: a Metaflow
# checkout or its test/data; ARGS="--impl metaflow" runs it against metaflow.S3 (~40 min),
# ARGS="--impl metaflow --write-expected" records metaflow.S3's failures for `make test`.
SUITE ?= ../shared/metaflow-tests
test-metaflow-suite: $(STAMP)
	$(BIN)/python -m tests.metaflow_suite --suite "$(SUITE)" $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

# Not part of CI: mixed operations through a fault-injecting proxy (~3 min); SOAK_ARGS="--seconds 30"
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check s3fast tests benchmarks examples metaflow_extensions
	$(BIN)/ruff format --check s3fast tests benchmarks examples metaflow_extensions
	$(BIN)/mypy s3fast

format: $(STAMP)
	$(BIN)/ruff format s3fast tests benchmarks examples metaflow_extensions
	$(BIN)/ruff check --fix s3fast tests benchmarks examples metaflow_extensions

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
