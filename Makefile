# Set-up and entry points. `make run` and `make test` work from a fresh clone with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
# XLA's compiled programs are cached on disk and shared by the test workers, the notebook kernels and the
# subprocess tests (the same programs compile in several processes); `make clean` removes the cache.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/sift-jax reproduce --quick --overwrite --out results/quick

lint: $(STAMP_TEST)
	$(BIN)/ruff check sift_jax tests benchmarks
	$(BIN)/ruff format --check sift_jax tests benchmarks

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15 tests sift_jax --doctest-modules
	SIFT_QUICK=1 $(BIN)/python -m pytest -n 2 --nbmake notebooks

bench: $(STAMP_RUN)
	$(BIN)/sift-jax bench

clean:
	rm -rf $(VENV) results .jax_cache
