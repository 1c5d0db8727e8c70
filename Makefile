# duplexd — every command of README.md and DEVELOPMENT.md has a target here.
# `make run` and `make test` install everything they need into .venv on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8765
# the side port (/healthz /metrics, the browser page): PORT + 1000 unless given
HTTP_PORT ?= $(shell expr $(PORT) + 1000)
ENGINE ?= vits
PYTEST_ARGS ?=
LINT_DIRS := duplexd tests bench tools examples fuzz
# make profile-engine: N batches of BATCH sentences on DEVICE, Chrome trace to TRACE
N ?= 5
BATCH ?= 1
DEVICE ?= auto
TRACE ?= out/engine-trace.json
# make spy-top PID=1234 / make spy-record PID=1234 [OUT=out/py-spy.svg] [DURATION=10]
PID ?=
OUT ?= out/py-spy.svg
DURATION ?= 10
SPY_ARGS ?=
# make fuzz [FUZZ_SECONDS=60] [FUZZ_EXAMPLES=500] [FUZZ_ARGS=--seed 1]; make soak [SOAK_CYCLES=10000]
FUZZ_SECONDS ?= 60
FUZZ_EXAMPLES ?= 500
FUZZ_ARGS ?=
SOAK_CYCLES ?= 10000
SOAK_ARGS ?=
BENCH_SECONDS ?= 10
DESTDIR ?=
PREFIX ?= /opt/duplexd
BENCH_ARGS ?=
# make gpu-check [GPU_PY=python3] [GPU_LEVELS=1,100,300,1000] [GPU_OUT=out/gpu-sweep]: 16-core CUDA host
GPU_PY ?= $(PY)
GPU_LEVELS ?= 1,100,300,1000
GPU_DAEMON_CPUS ?= 0-7
GPU_MODEL_CPUS ?= 8,9
GPU_CLIENT_CPUS ?= 10-15
GPU_OUT ?= out/gpu-sweep

.PHONY: install install-service run test test-unit test-integration lint fix typecheck ci tsan bench clean \
	cov spy-top spy-record profile-engine fuzz soak gpu-check

install: $(STAMP)

# What duplexd._native is built from: every C source and header in native/ and the build
# script (native/test_*.c are C-only tests, built by native/Makefile, not into the module).
NATIVE_SRCS := $(filter-out native/test_%,$(wildcard native/*.c native/*.h)) native/_build_ring.py

# torch: pin the CPU wheel (2.13.0) unless a torch is already importable (a CUDA build on a
# GPU machine is kept as it is). A plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py $(NATIVE_SRCS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cffi
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# a wheel of this checkout into $(PREFIX)/venv (runtime dependencies only), the units, the
# configuration and the docs (deploy/install-service.sh; DESTDIR: a staging root)
install-service:
	PYTHON=$(PYTHON) sh deploy/install-service.sh "$(DESTDIR)" "$(PREFIX)"

run: install
	$(VENV)/bin/duplexd serve --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) \
		--engine $(ENGINE) --log-format text

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest -m "integration and not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

fix: install
	$(VENV)/bin/ruff check --fix $(LINT_DIRS)
	$(VENV)/bin/ruff format $(LINT_DIRS)

typecheck: install
	$(VENV)/bin/mypy

ci: lint typecheck test

tsan:
	$(MAKE) -C native tsan

bench: install
	$(PY) -m bench --engine tone --sessions 1,50,100 --duration $(BENCH_SECONDS) $(BENCH_ARGS)

# coverage of the suite without the real-time `slow` tests; the floors are in tools/
cov: install
	mkdir -p out
	$(PY) -m pytest -m "not slow" --cov=duplexd --cov-report=term \
		--cov-report=json:out/coverage.json $(PYTEST_ARGS)
	$(PY) tools/check_coverage.py out/coverage.json

# not in `make test`: hypothesis state machines of the codec and the session rules against the
# SPEC models in fuzz/ (FUZZ_EXAMPLES each), then FUZZ_SECONDS of network fuzz against a real
# daemon; both must find nothing unexpected (fuzz/__init__.py maps the folder)
fuzz: install
	mkdir -p out
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_STATS_JSON=out/fuzz-stateful.json $(PY) -m pytest fuzz \
		-q -p no:cacheprovider --hypothesis-profile fuzz $(PYTEST_ARGS)
	$(PY) -m fuzz.network --seconds $(FUZZ_SECONDS) --json out/fuzz-network.json $(FUZZ_ARGS)

# SOAK_CYCLES open/stream/interrupt/close cycles (some vanish mid-frame, some go silent)
# against a daemon process: its fds, threads, trio tasks and RSS must stay flat
soak: install
	mkdir -p out
	$(PY) -m fuzz.soak --cycles $(SOAK_CYCLES) --json out/soak.json $(SOAK_ARGS)

spy-top: install
	@test -n "$(PID)" || { echo "usage: make spy-top PID=<pid of duplexd serve>" >&2; exit 2; }
	$(VENV)/bin/py-spy top --pid $(PID) $(SPY_ARGS)

spy-record: install
	@test -n "$(PID)" || { echo "usage: make spy-record PID=<pid> [OUT=out/x.svg]" >&2; exit 2; }
	mkdir -p $(dir $(OUT))
	$(VENV)/bin/py-spy record --pid $(PID) --duration $(DURATION) --output $(OUT) $(SPY_ARGS)

profile-engine: install
	$(PY) -m bench.profile_engine --n $(N) --batch $(BATCH) --device $(DEVICE) --out $(TRACE)

# on a CUDA host (no install: GPU_PY is a Python that has the project's packages and a CUDA
# torch): the GPU tests, the engine's RTF, then the daemon's sweep (8 workers, one model
# process on the GPU) into $(GPU_OUT).{json,md}; bench/results/README.md, "VITS on an H200"
gpu-check:
	mkdir -p out
	$(GPU_PY) -m pytest -m gpu -p no:cacheprovider -q tests/test_vits_gpu.py
	$(GPU_PY) -m bench.vits_rtf --device cuda --runs 10
	$(GPU_PY) -m bench --engine vits --device cuda --model-process --daemon-workers 8 \
		--daemon-cpus $(GPU_DAEMON_CPUS) --model-cpus $(GPU_MODEL_CPUS) \
		--client-cpus $(GPU_CLIENT_CPUS) --workers 6 --sessions $(GPU_LEVELS) --duration 15 \
		--no-baseline --no-progress --json $(GPU_OUT).json > $(GPU_OUT).md
	cat $(GPU_OUT).md

clean:
	rm -rf build dist *.egg-info native/build duplexd/_native*.so duplexd/_native.c out
