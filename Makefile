# duplexd — every command of README.md and DEVELOPMENT.md has a target here.
# `make run` and `make test` install everything they need into .venv on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8765
ENGINE ?= vits
PYTEST_ARGS ?=

.PHONY: install run test test-unit test-integration lint fix typecheck ci tsan bench clean

install: $(STAMP)

# torch: pin the CPU wheel (2.13.0) unless a torch is already importable (a CUDA build on a
# GPU machine is kept as it is). A plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py native/dx_ring.c native/dx_ring.h native/_build_ring.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	$(VENV)/bin/duplexd serve --host $(HOST) --port $(PORT) --engine $(ENGINE) --log-format text

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest -m "integration and not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check duplexd tests bench
	$(VENV)/bin/ruff format --check duplexd tests bench

fix: install
	$(VENV)/bin/ruff check --fix duplexd tests bench
	$(VENV)/bin/ruff format duplexd tests bench

typecheck: install
	$(VENV)/bin/mypy

ci: lint typecheck test

tsan:
	$(MAKE) -C native tsan

bench: install
	$(PY) -m bench --engine tone --sessions 1,50,100 --duration 10

clean:
	rm -rf build dist *.egg-info native/build duplexd/_native*.so duplexd/_native.c
